"""``etbridge console``: the fleet, its orgs and its sinks as server-rendered web pages.

A small Starlette app (no build step, no CDN, no JavaScript) over
:func:`etbridge.status.collect`: it reads Redis only and never asks for a
token, like ``etbridge status``. It binds 127.0.0.1 by default; on any other
address it requires ``ETBRIDGE_CONSOLE_TOKEN`` (a bearer header, or once as
``?token=`` which sets a cookie). Forms that change something (redeliver,
approve or reject held deletions) ask for confirmation and carry a CSRF token.
The fleet, org and sink pages render in :mod:`etbridge.consolepages`, the
delivery and deletion views in :mod:`etbridge.consoleviews`.
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
from etbridge import holds, logs, outbox, state, status
from etbridge.consolepages import (
    HISTORY_EVERY,
    HISTORY_LENGTH,
    page,
    render_confirm,
    render_fleet,
    render_org,
    render_sinks,
)
from etbridge.errors import FatalError
from etbridge.holds import Hold
from etbridge.outbox import attempts as attempt_log
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings
from etbridge.timeline import booking_timeline

COOKIE = "etbridge_console"


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
            for hold in holds.read_many(reader, settings.keyspace, org_ids, res).values()
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
            state.text_hash(reader.hgetall(settings.keyspace.org_meta(org_id, r)))
            for r in settings.resources
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
        hold = (
            holds.read(reader, settings.keyspace, org_id, res)
            if res in settings.resources
            else None
        )
        if hold is None or verb not in views.ACTIONS:
            return HTMLResponse(page("No held deletions", "<p>nothing held there</p>"), 404)
        if request.method == "GET":
            return HTMLResponse(page(*views.render_hold_confirm(hold, verb, csrf)))
        refused = unconfirmed(request, f"/orgs/{quote(org_id)}")
        if refused is not None:
            return refused
        back = f'<p><a href="/orgs/{quote(org_id)}">back to org {escape(org_id)}</a></p>'
        if verb == "approve":
            holds.approve(reader, settings.keyspace, org_id, res)
            text = f"<p>approved {hold.count} held deletion(s); the next sweep applies it</p>"
        else:
            holds.reject(reader, settings.keyspace, org_id, res)
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
    budget = RequestBudget.for_settings(settings, reader)

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
