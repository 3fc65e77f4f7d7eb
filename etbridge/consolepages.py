"""The console's fleet, org and sink pages, and the frame every page shares (pure).

Rendering only: :mod:`etbridge.console` reads Redis and serves these; the
delivery and deletion views are in :mod:`etbridge.consoleviews`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from etbridge import consoleviews as views
from etbridge.holds import Hold
from etbridge.outbox import DeadLetter

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
