"""``etbridge console``: the fleet, its orgs and its sinks as server-rendered web pages.

A small Starlette app (no build step, no CDN, no JavaScript) over
:func:`etbridge.status.collect`: it reads Redis only and never asks for a
token, like ``etbridge status``. It binds 127.0.0.1 by default; on any other
address it requires ``ETBRIDGE_CONSOLE_TOKEN`` (a bearer header, or once as
``?token=`` which sets a cookie). Forms that change something (redeliver,
approve or reject held deletions) ask for confirmation and carry a CSRF token.
The delivery and deletion pages render in :mod:`etbridge.consoleviews`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from etbridge import consoleviews as views
from etbridge import holds, keys, logs, outbox, state, status
from etbridge.errors import FatalError
from etbridge.holds import Hold
from etbridge.outbox import DeadLetter
from etbridge.outbox import attempts as attempt_log
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings
from etbridge.timeline import booking_timeline

COOKIE = "etbridge_console"
REFRESH_SECONDS = 10
# The budget chart: a sample every HISTORY_EVERY s, the last HISTORY_LENGTH of them.
HISTORY_EVERY = 10.0
HISTORY_LENGTH = 30

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{background:#1d2329;color:#fff;padding:.6em 1.2em}header a{color:#fff;margin-right:1.2em}
main{padding:1em 1.2em}table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #dde1e6;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eef0f3}.bad{color:#b3261e;font-weight:600}.ok{color:#1b6e3a}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin-bottom:1em}
.card{background:#fff;border:1px solid #dde1e6;padding:.6em 1em;min-width:12em}
dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1.2em;background:#fff;padding:1em}
dt{font-weight:600}table.attempts{font-size:12px}summary{cursor:pointer;color:#3b6fb6}
tr.held td{background:#fff4e5}.banner{background:#fdecea;padding:.6em 1em}
a.button{border:1px solid #3b6fb6;border-radius:3px;padding:.1em .5em;text-decoration:none}
"""


class ConsoleError(Exception):
    """A console that must not start (``str()`` is one line)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, settings: Settings) -> None:
    """Any address but loopback needs ``ETBRIDGE_CONSOLE_TOKEN``."""
    if not is_loopback(host) and settings.console_token is None:
        raise ConsoleError(
            f"console: --host {host} is reachable from other machines; "
            "set ETBRIDGE_CONSOLE_TOKEN (or keep the default 127.0.0.1)"
        )


# --- rendering (pure) --------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return escape(str(value))


def page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{escape(title)} · etbridge</title><style>{_STYLE}</style></head><body>"
        '<header><a href="/"><b>etbridge</b></a><a href="/">Fleet</a>'
        '<a href="/sinks">Sinks</a></header>'
        f"<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def _token_card(tok: dict[str, Any]) -> str:
    if tok.get("error"):
        state = f'<span class="bad">ERROR {escape(str(tok["error"]))}</span>'
        if tok.get("next_attempt_at"):
            state += f"<br>next attempt {_cell(tok['next_attempt_at'])}"
    elif tok.get("expires_at"):
        state = f'<span class="ok">valid</span> until {_cell(tok["expires_at"])}'
    else:
        state = "not fetched yet"
    return f'<div class="card"><b>Token</b><br>{state}</div>'


class BudgetHistory:
    """The fleet budget's use, sampled every :data:`HISTORY_EVERY` s while the console runs."""

    def __init__(self, length: int = HISTORY_LENGTH) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=length)
        self._lock = threading.Lock()

    def add(self, at: float, used: int) -> None:
        with self._lock:
            if self.samples and at - self.samples[-1][0] < HISTORY_EVERY / 2:
                return
            self.samples.append((at, used))

    def snapshot(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.samples)


def budget_chart(samples: list[tuple[float, int]], limit: int) -> str:
    """An inline SVG bar chart of requests used per sample, against the limit (pure)."""
    width, height, bar = 240, 48, 240 / HISTORY_LENGTH
    bars = []
    for n, (at, used) in enumerate(samples[-HISTORY_LENGTH:]):
        h = max(1.0, height * min(1.0, used / max(1, limit)))
        when = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")
        bars.append(
            f'<rect x="{n * bar:.1f}" y="{height - h:.1f}" width="{bar - 1:.1f}" '
            f'height="{h:.1f}" fill="{"#b3261e" if used >= limit else "#3b6fb6"}">'
            f"<title>{when}: {used} of {limit}</title></rect>"
        )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="requests used in the last minute, sampled every {HISTORY_EVERY:g} s">'
        f'<rect width="{width}" height="{height}" fill="#eef0f3"/>{"".join(bars)}</svg>'
    )


def render_fleet(
    doc: dict[str, Any],
    history: list[tuple[float, int]] | None = None,
    held: Sequence[Hold] = (),
) -> str:
    budget = doc.get("rate_budget", {})
    box = doc.get("outbox", {})
    paused = budget.get("paused_until")
    cards = [
        _token_card(doc.get("token", {})),
        '<div class="card"><b>Budget</b><br>'
        f"{_cell(budget.get('used'))} of {_cell(budget.get('limit'))} requests a minute"
        + (f'<br><span class="bad">paused until {_cell(paused)}</span>' if paused else "")
        + (
            f"<br>{budget_chart(history, int(budget.get('limit') or 1))}"
            "<br><small>each bar: the last minute's requests, every "
            f"{HISTORY_EVERY:g} s over {HISTORY_EVERY * HISTORY_LENGTH / 60:g} min</small>"
            if history
            else ""
        )
        + "</div>",
        '<div class="card"><b>Outbox</b><br>'
        f"pending {_cell(box.get('pending'))}, retrying {_cell(box.get('retrying'))}, "
        f"dead-lettered {_cell(box.get('dead_lettered'))}</div>",
        '<div class="card"><b>Planner</b><br>'
        f"{_cell(doc.get('planner', {}).get('orgs'))} orgs, latency bound "
        f"{_cell(doc.get('planner', {}).get('latency_bound'))} s</div>",
    ]
    warnings = "".join(f'<p class="bad">{escape(w)}</p>' for w in doc.get("warnings", []))
    rows = []
    # Orgs with held deletions first: they wait for an operator.
    orgs = sorted(
        doc.get("orgs", {}).items(), key=lambda kv: (not kv[1].get("deletions_held"), kv[0])
    )
    for org_id, org in orgs:
        errors = org.get("errors") or 0
        count = org.get("deletions_held") or 0
        access = (
            f'<span class="bad">INACCESSIBLE</span> since {_cell(org.get("inaccessible_since"))}'
            if org.get("accessible") is False and not org.get("removed")
            else "ok"
        )
        rows.append(
            f'<tr class="{"held" if count else ""}">'
            f'<td><a href="/orgs/{quote(org_id)}">{escape(org_id)}</a></td>'
            f'<td class="{"bad" if count else ""}">{_cell(count)}</td><td>{access}</td>'
            f"<td>{_cell(org.get('last_poll'))}</td><td>{_cell(org.get('lag'))}</td>"
            f"<td>{_cell(org.get('last_full_sweep'))}</td>"
            f"<td>{_cell(org.get('sweep_in_progress'))}</td>"
            f"<td>{_cell(org.get('records'))}</td>"
            f'<td class="{"bad" if errors else ""}">{_cell(errors)}</td>'
            f"<td>{_cell(org.get('last_error'))}</td></tr>"
        )
    table = (
        "<table><tr><th>org</th><th>deletions held</th><th>access</th><th>last poll</th>"
        "<th>lag (s)</th><th>last full sweep</th>"
        "<th>sweeping</th><th>bookings</th><th>errors</th><th>last error</th></tr>"
        + ("".join(rows) or '<tr><td colspan="10">no orgs yet</td></tr>')
        + "</table>"
    )
    generated = (
        f"<p>as of {_cell(doc.get('generated_at'))}</p>"
        '<form action="/events" method="get"><label>Event id <input name="id" required>'
        '</label> <button type="submit">Show the event</button></form>'
    )
    pending = f"<h2>Held deletions</h2>{views.holds_table(held, with_org=True)}" if held else ""
    return page(
        "Fleet", f'<div class="cards">{"".join(cards)}</div>{warnings}{pending}{generated}{table}'
    )


def _facts(facts: dict[str, Any]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{_cell(v)}</dd>" for k, v in facts.items())
    return f"<dl>{items}</dl>"


def render_org(
    org_id: str, org: dict[str, Any], held: Sequence[Hold] = (), access_error: str | None = None
) -> str:
    lookup = (
        f'<form action="/orgs/{quote(org_id)}/bookings" method="get">'
        '<label>Booking id <input name="id" required></label> '
        '<button type="submit">Show its timeline</button></form>'
    )
    banner = views.access_banner(org.get("inaccessible_since"), access_error)
    deletions = f"<h2>Held deletions</h2>{views.holds_table(held, with_org=False)}"
    facts = {k: v for k, v in sorted(org.items()) if k != "resources"}
    return page(f"Org {org_id}", banner + lookup + deletions + "<h2>State</h2>" + _facts(facts))


def _dead_letters(letters: list[DeadLetter]) -> str:
    if not letters:
        return "<p>no dead letters</p>"
    rows = "".join(
        f"<tr><td><code>{escape(x.event_id[:16])}</code></td><td>{escape(x.org_id)}</td>"
        f"<td>{escape(x.type)}</td><td>{x.attempts}</td><td>{views.iso(x.failed_at)}</td>"
        f"<td>{escape(x.error)}</td><td>"
        f'<a href="/dlq/{quote(x.sink_name)}/{quote(x.event_id)}">redeliver…</a></td></tr>'
        for x in letters
    )
    return (
        "<table><tr><th>event</th><th>org</th><th>type</th><th>attempts</th>"
        f"<th>failed at</th><th>last error</th><th></th></tr>{rows}</table>"
    )


def render_sinks(doc: dict[str, Any], letters: list[DeadLetter], cap: int = 0) -> str:
    sections = []
    for url, sink in sorted(doc.get("sinks", {}).items()):
        mine = [x for x in letters if x.sink == url]
        sections.append(
            f"<h2>{escape(url)}</h2>{views.sink_cards(sink, cap)}"
            f"{_facts(dict(sorted(sink.items())))}"
            f"<h3>Dead letters</h3>{_dead_letters(mine)}"
        )
    return page("Sinks", "".join(sections) or "<p>no sinks</p>")


def render_confirm(letter: DeadLetter, csrf: str) -> str:
    body = (
        f"<p>Send event <code>{escape(letter.event_id)}</code> ({escape(letter.type)}, org "
        f"{escape(letter.org_id)}) to <b>{escape(letter.sink)}</b> again, with the same id? "
        f"It failed {letter.attempts} time(s): {escape(letter.error)}</p>"
        f'<form method="post"><input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button type="submit" name="confirm" value="yes">Redeliver now</button> '
        '<a href="/sinks">cancel</a></form>'
    )
    return page("Redeliver a dead letter", body)


# --- the app -----------------------------------------------------------------------------


# The routes are closures over reader/token: ruff counts them all here.
def create_app(settings: Settings, client: redis.Redis | None = None) -> Starlette:  # noqa: C901, PLR0915
    """The console app; reads Redis through ``client`` (one from the settings by default)."""
    reader = client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5
    )
    token = settings.console_token.get_secret_value() if settings.console_token else None
    logs.add_settings_secrets(settings)  # error texts shown are scrubbed of them
    # Forms carry this, so another site cannot make an operator's browser redeliver.
    csrf = secrets.token_urlsafe(24)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        header = request.headers.get("authorization", "")
        offered = header[7:] if header.lower().startswith("bearer ") else ""
        offered = offered or request.cookies.get(COOKIE, "")
        return bool(offered) and hmac.compare_digest(offered.encode(), token.encode())

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            offered = request.query_params.get("token")
            if token is not None and offered is not None:
                if not hmac.compare_digest(offered.encode(), token.encode()):
                    return HTMLResponse(page("Not allowed", "<p>wrong token</p>"), 403)
                # Once: the token moves into an HttpOnly cookie and out of the URL.
                response = RedirectResponse(request.url.path, 303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            if not authorized(request):
                return HTMLResponse(
                    page("Not allowed", "<p>open the console with ?token=…</p>"), 401
                )
            # The form body is read here; the handlers block on Redis: off the event loop.
            request.state.body = await request.body() if request.method == "POST" else b""
            result: Response = await run_in_threadpool(handler, request)
            return result

        return endpoint

    def unconfirmed(request: Request, cancel: str) -> Response | None:
        """None for a confirmed form of this console; else the answer (403, or back)."""
        form = parse_qs(request.state.body.decode())
        if not hmac.compare_digest(form.get("csrf", [""])[0].encode(), csrf.encode()):
            return HTMLResponse(page("Not allowed", "<p>stale form: reload</p>"), 403)
        return None if form.get("confirm") == ["yes"] else RedirectResponse(cancel, 303)

    def collect() -> dict[str, Any]:
        return status.collect(reader, settings)

    def held_of(org_ids: Sequence[str]) -> list[Hold]:
        return [
            hold
            for res in settings.resources
            for hold in holds.read_many(reader, org_ids, res).values()
            if hold is not None
        ]

    def fleet(request: Request) -> Response:
        doc = collect()
        history.add(time.time(), int(doc.get("rate_budget", {}).get("used") or 0))
        held = held_of([o for o, f in doc.get("orgs", {}).items() if f.get("deletions_held")])
        return HTMLResponse(render_fleet(doc, history.snapshot(), held))

    def org(request: Request) -> Response:
        org_id = request.path_params["org_id"]
        facts = collect().get("orgs", {}).get(org_id)
        if facts is None:
            return HTMLResponse(page("Unknown org", f"<p>no org {escape(org_id)}</p>"), 404)
        # Lost access: the scrubbed error of the first resource that lost it.
        metas = [
            state.text_hash(reader.hgetall(keys.org_meta(org_id, r))) for r in settings.resources
        ]
        error = next((m["inaccessible_error"] for m in metas if m.get("inaccessible_error")), None)
        error = attempt_log.scrub(error) if error else None
        return HTMLResponse(render_org(org_id, facts, held_of([org_id]), error))

    def sinks(request: Request) -> Response:
        letters = outbox.dlq_list(reader, settings)
        return HTMLResponse(render_sinks(collect(), letters, settings.dlq_maxlen))

    def event_lookup(request: Request) -> Response:
        event_id = request.query_params.get("id", "").strip()
        return RedirectResponse(f"/events/{quote(event_id)}", 303)

    def event(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        found = attempt_log.find_event(
            reader, settings, event_id, request.query_params.get("org") or None
        )
        if found is None:
            return HTMLResponse(page("Unknown event", "<p>no such event retained</p>"), 404)
        org_id, ev = found
        try:
            envelope: Any = ev.envelope
        except FatalError:
            envelope = ev.body.decode("utf-8", "replace")
        kind = str(envelope.get("type")) if isinstance(envelope, dict) else "?"
        logged = attempt_log.read(
            reader, settings, org_id, event_id, [s.name for s in settings.sinks]
        )
        per_sink = [(s.display, s.kind, logged.get(s.name, [])) for s in settings.sinks]
        title, body = views.render_event(
            org_id, event_id, kind, ev.entry_id, ev.committed_at, envelope, per_sink
        )
        return HTMLResponse(page(title, body))

    def deletions(request: Request) -> Response:
        org_id, res, verb = (request.path_params[k] for k in ("org_id", "resource", "verb"))
        hold = holds.read(reader, org_id, res) if res in settings.resources else None
        if hold is None or verb not in views.ACTIONS:
            return HTMLResponse(page("No held deletions", "<p>nothing held there</p>"), 404)
        if request.method == "GET":
            return HTMLResponse(page(*views.render_hold_confirm(hold, verb, csrf)))
        refused = unconfirmed(request, f"/orgs/{quote(org_id)}")
        if refused is not None:
            return refused
        back = f'<p><a href="/orgs/{quote(org_id)}">back to org {escape(org_id)}</a></p>'
        if verb == "approve":
            holds.approve(reader, org_id, res)
            text = f"<p>approved {hold.count} held deletion(s); the next sweep applies it</p>"
        else:
            holds.reject(reader, org_id, res)
            text = f"<p>hold of {hold.count} dropped; the bookings stay stored</p>"
        return HTMLResponse(page("Held deletions", text + back))

    def lookup(request: Request) -> Response:
        org_id = request.path_params["org_id"]
        booking_id = request.query_params.get("id", "").strip()
        return RedirectResponse(f"/orgs/{quote(org_id)}/bookings/{quote(booking_id)}", 303)

    def booking(request: Request) -> Response:
        org_id, booking_id = request.path_params["org_id"], request.path_params["booking_id"]
        events = booking_timeline(reader, settings, org_id, booking_id)
        return HTMLResponse(page(*views.render_timeline(org_id, booking_id, events)))

    def redeliver(request: Request) -> Response:
        sink_name, event_id = request.path_params["sink"], request.path_params["event_id"]
        letter = next(
            (
                x
                for x in outbox.dlq_list(reader, settings)
                if x.sink_name == sink_name and x.event_id == event_id
            ),
            None,
        )
        if letter is None:
            return HTMLResponse(page("Not dead-lettered", "<p>no such dead letter</p>"), 404)
        if request.method == "GET":
            return HTMLResponse(render_confirm(letter, csrf))
        refused = unconfirmed(request, "/sinks")
        if refused is not None:
            return refused
        sent = outbox.dlq_redeliver(reader, settings, [event_id], sink=sink_name)
        text = (
            f"<p>redelivered <code>{escape(event_id)}</code> to {escape(letter.sink)}</p>"
            if sent
            else "<p class=bad>the sink refused it again: still dead-lettered</p>"
        )
        return HTMLResponse(page("Redelivery", text + '<p><a href="/sinks">sinks</a></p>'))

    history = BudgetHistory()
    budget = RequestBudget(reader, keys.digest(settings.client_id), settings.rate_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()

        def sample() -> None:
            while True:
                with contextlib.suppress(redis.exceptions.RedisError):
                    history.add(time.time(), int(budget.status()["used"]))
                if stop.wait(HISTORY_EVERY):
                    return

        thread = threading.Thread(target=sample, name="console-budget", daemon=True)
        thread.start()
        yield
        stop.set()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", guarded(fleet)),
            Route("/orgs/{org_id}", guarded(org)),
            Route("/orgs/{org_id}/bookings", guarded(lookup)),
            Route("/orgs/{org_id}/bookings/{booking_id}", guarded(booking)),
            Route("/sinks", guarded(sinks)),
            Route("/events", guarded(event_lookup)),
            Route("/events/{event_id}", guarded(event)),
            Route(
                "/deletions/{org_id}/{resource}/{verb}",
                guarded(deletions),
                methods=["GET", "POST"],
            ),
            Route("/dlq/{sink}/{event_id}", guarded(redeliver), methods=["GET", "POST"]),
        ],
    )


class _AnnouncingServer(uvicorn.Server):
    """Prints ``console listening on URL`` once it accepts (tests and the demo wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"console listening on http://{host}:{port}/", flush=True)


def serve(settings: Settings, host: str, port: int) -> int:
    """Run the console until SIGINT/SIGTERM."""
    check_binding(host, settings)
    server = _AnnouncingServer(
        uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=3,
        )
    )
    server.run()
    return 0 if server.started else 1
