"""The console's pages for delivery and deletion safety (rendering only, pure).

A booking's timeline with each event's attempts per sink (the attempt log,
:mod:`etbridge.outbox.attempts`), the event page (like ``etbridge events
show``), held deletions with their
approve/reject confirmation (:mod:`etbridge.holds`), an inaccessible org's
state and a sink's breaker and dead-letter fill. :mod:`etbridge.console`
reads Redis and serves these.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from etbridge.holds import Hold
from etbridge.outbox.attempts import Attempt
from etbridge.timeline import TimelineEvent

ACTIONS = {"approve": "Approve", "reject": "Reject"}


def iso(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if epoch else "-"


def attempt_rows(attempts: Sequence[Attempt]) -> str:
    """One table row per attempt: time, number, status or error class, latency, excerpt."""
    return "".join(
        f"<tr><td>{iso(a.at)}</td><td>#{a.attempt}</td>"
        f'<td class="{"ok" if a.ok else "bad"}">{escape(a.status)}</td>'
        f"<td>{a.ms:.1f} ms</td><td><code>{escape(a.excerpt) or '-'}</code></td></tr>"
        for a in attempts
    )


def attempts_table(attempts: Sequence[Attempt]) -> str:
    if not attempts:
        return "<p>no attempt recorded (not sent yet, filtered out, or expired)</p>"
    return (
        '<table class="attempts"><tr><th>at</th><th>attempt</th><th>status / error</th>'
        f"<th>latency</th><th>excerpt</th></tr>{attempt_rows(attempts)}</table>"
    )


def delivered_at(attempts: Sequence[Attempt]) -> float | None:
    """When the sink accepted the event: its last successful attempt."""
    return next((a.at for a in reversed(attempts) if a.ok), None)


def delivery_cell(state: str, attempts: Sequence[Attempt]) -> str:
    """A timeline cell: the state, when it was delivered, and the attempts (folded)."""
    good = state in ("delivered", "filtered")
    when = delivered_at(attempts)
    head = f'<span class="{"ok" if good else "bad"}">{escape(state)}</span>'
    if when is not None and state == "delivered":
        head += f"<br><small>at {iso(when)}</small>"
    if attempts:
        head += (
            f"<details><summary>{len(attempts)} attempt(s)</summary>"
            f"{attempts_table(attempts)}</details>"
        )
    return head


def _json(value: Any) -> str:
    # Text content: quotes need no escaping there, < > & do.
    return escape(json.dumps(value, ensure_ascii=False), quote=False)


def _changes(changes: dict[str, Any]) -> str:
    if not changes:
        return "-"
    return "<br>".join(
        f"<b>{escape(name)}</b>: {_json(c.get('from'))} → {_json(c.get('to'))}"
        for name, c in sorted(changes.items())
        if isinstance(c, dict)
    )


def render_timeline(
    org_id: str, booking_id: str, events: Sequence[TimelineEvent]
) -> tuple[str, str]:
    """(title, body) of a booking's timeline: per event and sink, its state and attempts."""
    title = f"Booking {booking_id} of org {org_id}"
    if not events:
        return title, "<p>no change event of this booking is retained in the outbox</p>"
    sinks = [d.sink for d in events[0].deliveries]
    head = "".join(f"<th>{escape(s)}</th>" for s in sinks)
    rows = []
    for ev in events:
        cells = "".join(f"<td>{delivery_cell(d.state, d.attempts)}</td>" for d in ev.deliveries)
        rows.append(
            f'<tr class="event"><td>{escape(ev.time or "-")}</td>'
            f"<td>{escape(ev.detected_at or '-')}</td>"
            f"<td>{escape(ev.type)}</td><td>{_changes(ev.changes)}</td>{cells}"
            f'<td><a href="/events/{quote(ev.id)}?org={quote(org_id)}">'
            f"<code>{escape(ev.id[:16])}</code></a></td></tr>"
        )
    table = (
        "<table><tr><th>time</th><th>detected</th><th>type</th><th>changes</th>"
        f"{head}<th>event id</th></tr>{''.join(rows)}</table>"
    )
    back = f'<p><a href="/orgs/{quote(org_id)}">back to org {escape(org_id)}</a></p>'
    return title, back + table


def render_event(
    org_id: str,
    event_id: str,
    kind: str,
    entry_id: str,
    committed_at: float,
    envelope: Any,
    per_sink: Sequence[tuple[str, str, Sequence[Attempt]]],
) -> tuple[str, str]:
    """(title, body) of the event page; ``per_sink``: (display URL, kind, attempts)."""
    facts = (
        f"<dl><dt>org</dt><dd><a href='/orgs/{quote(org_id)}'>{escape(org_id)}</a></dd>"
        f"<dt>type</dt><dd>{escape(kind)}</dd><dt>outbox entry</dt><dd>{escape(entry_id)}</dd>"
        f"<dt>committed</dt><dd>{iso(committed_at)}</dd></dl>"
    )
    subject = envelope.get("subject") if isinstance(envelope, dict) else None
    if subject:
        facts += (
            f'<p><a href="/orgs/{quote(org_id)}/bookings/{quote(str(subject))}">'
            f"timeline of booking {escape(str(subject))}</a></p>"
        )
    sections = "".join(
        f"<h2>{escape(url)} <small>[{escape(sink_kind)}]</small></h2>{attempts_table(attempts)}"
        for url, sink_kind, attempts in per_sink
    )
    text = json.dumps(envelope, indent=2, sort_keys=True, ensure_ascii=False)
    body = f"{facts}{sections}<h2>Envelope</h2><pre>{escape(text, quote=False)}</pre>"
    return f"Event {event_id}", body


def holds_table(holds: Sequence[Hold], *, with_org: bool) -> str:
    """Held deletions: count, reason, since, approved, and the approve/reject buttons."""
    if not holds:
        return "<p>no deletions held</p>"
    rows = []
    for h in holds:
        base = f"/deletions/{quote(h.org_id)}/{quote(h.resource)}"
        buttons = " ".join(
            f'<a class="button" href="{base}/{verb}">{label}…</a>'
            for verb, label in ACTIONS.items()
        )
        approved = (
            f"yes, {len(h.approved_ids)} at {iso(h.approved_at)} (the next sweep applies it)"
            if h.approved_ids
            else "no"
        )
        org = (
            f'<td><a href="/orgs/{quote(h.org_id)}">{escape(h.org_id)}</a></td>' if with_org else ""
        )
        rows.append(
            f'<tr class="held">{org}<td>{escape(h.resource)}</td>'
            f'<td class="bad">{h.count} of {h.stored}</td><td>{escape(h.reason)}</td>'
            f"<td>{iso(h.since)}</td><td>{approved}</td><td>{buttons}</td></tr>"
        )
    head = "<th>org</th>" if with_org else ""
    return (
        f"<table><tr>{head}<th>resource</th><th>held (of stored)</th><th>reason</th>"
        f"<th>since</th><th>approved</th><th></th></tr>{''.join(rows)}</table>"
    )


def render_hold_confirm(hold: Hold, verb: str, csrf: str) -> tuple[str, str]:
    """(title, body) asking to confirm approving or rejecting a hold."""
    if verb == "approve":
        what = (
            f"Approve the {hold.count} held deletion(s) of org {escape(hold.org_id)} "
            f"({escape(hold.resource)})? The org's next sweep, requested now, announces "
            "those still missing from the listing as deleted."
        )
    else:
        what = (
            f"Reject the hold of {hold.count} deletion(s) of org {escape(hold.org_id)} "
            f"({escape(hold.resource)})? The bookings stay stored; a sweep that misses "
            "them again holds them again."
        )
    shown = 20  # ids listed on the page; the rest are summarised by the ellipsis
    sample = ", ".join(escape(i) for i in hold.ids[:shown]) + (" …" if hold.count > shown else "")
    body = (
        f"<p>{what}</p><p>held since {iso(hold.since)}, reason {escape(hold.reason)}; "
        f"ids: {sample}</p>"
        f'<form method="post"><input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<button type="submit" name="confirm" value="yes">{ACTIONS[verb]} now</button> '
        f'<a href="/orgs/{quote(hold.org_id)}">cancel</a></form>'
    )
    return f"{ACTIONS[verb]} held deletions", body


def access_banner(since: str | None, error: str | None) -> str:
    """An inaccessible org (403/404 on its X-API-ORG): since when, and the error."""
    if not since:
        return ""
    return (
        f'<p class="bad banner">INACCESSIBLE since {escape(since)}: '
        f"{escape(error or 'access refused')}. Its bookings are kept, nothing is deleted "
        "while access is lost.</p>"
    )


def breaker(sink: dict[str, Any]) -> str:
    """A sink's circuit-breaker state: disabled by the breaker or by 410, or failing since."""
    if sink.get("disabled"):
        reason = str(sink.get("disabled_reason") or "")
        cause = (
            "by its circuit breaker"
            if reason.startswith("every attempt failed")
            else ("by 410 Gone from the receiver" if "410" in reason else "")
        )
        return (
            f'<span class="bad">DISABLED {cause}</span> since '
            f"{escape(str(sink.get('disabled_at')))}"
            f"<br><small>{escape(reason)}</small><br><small>re-enable: etbridge sink enable"
            "</small>"
        )
    if sink.get("failing_since"):
        return f'<span class="bad">failing since {escape(str(sink["failing_since"]))}</span>'
    return '<span class="ok">closed (delivering)</span>'


def sink_cards(sink: dict[str, Any], cap: int) -> str:
    """The breaker and dead-letter fill of one sink, as two cards."""
    dead = int(sink.get("dead_lettered") or 0)
    fill = float(sink.get("dead_letter_fill") or 0.0)
    dropped = int(sink.get("dead_letters_dropped") or 0)
    meter = (
        f'<meter min="0" max="{cap}" value="{dead}" low="{cap * 0.5:g}" high="{cap * 0.8:g}">'
        f"</meter>"
    )
    return (
        f'<div class="cards"><div class="card"><b>Breaker</b><br>{breaker(sink)}</div>'
        f'<div class="card"><b>Dead letters</b><br>{dead} of {cap} ({fill:.1%}) {meter}'
        + (f'<br><span class="bad">{dropped} dropped over the cap</span>' if dropped else "")
        + "</div></div>"
    )
