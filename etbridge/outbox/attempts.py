"""The attempt log: the last delivery attempts of each event at each sink, for operators.

One Redis list per (org, event, sink), ``etb:{org:ID}:attempts:EVENT:SINK``,
of JSON records ``{at, attempt, ok, status, ms, excerpt, entry}``; the newest
:data:`KEPT` stay, and the list expires with the outbox retention. Excerpts
are short and scrubbed of known secrets. ``etbridge events show`` and
``events list`` read it here, with the events from the outbox.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from etbridge import keys, logs
from etbridge.errors import FatalError
from etbridge.outbox.streams import event_body, known_orgs, text
from etbridge.settings import Settings
from etbridge.sinks import OutboxEvent

KEPT: Final = 10
EXCERPT_CHARS: Final = 160
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/=]+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SCAN_CHUNK: Final = 500


def scrub(excerpt: str) -> str:
    """A short excerpt without known secrets, signing keys or bearer tokens."""
    excerpt = logs.scrub(" ".join(excerpt.split()))
    excerpt = _BEARER.sub(r"\1***", _WHSEC.sub("whsec_***", excerpt))
    return excerpt[:EXCERPT_CHARS]


@dataclass(frozen=True)
class Attempt:
    """One attempt as recorded."""

    at: float
    attempt: int
    ok: bool
    status: str  # "HTTP 200", "accepted", or the error class ("ServerError HTTP 503")
    ms: float
    excerpt: str
    entry: str

    def line(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        mark = "ok  " if self.ok else "FAIL"
        tail = f"  {self.excerpt}" if self.excerpt else ""
        return f"{when}  #{self.attempt:<2} {mark} {self.status:<28} {self.ms:8.1f} ms{tail}"


class AttemptLog:
    """Writes attempts (one pipeline per chunk: a list push, trim and expiry per event)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.ttl_ms = int(settings.outbox_retention * 1000)

    def record(
        self,
        org_id: str,
        sink_name: str,
        events: Sequence[OutboxEvent],
        attempt_no: int,
        *,
        ok: bool,
        status: str,
        seconds: float,
        excerpt: str = "",
    ) -> None:
        now = time.time()
        clean = scrub(excerpt) if excerpt else ""
        pipe = self.redis.pipeline(transaction=False)
        for index, event in enumerate(events):
            record = {
                "at": round(now, 3),
                "attempt": attempt_no if index == 0 else 1,
                "ok": ok,
                "status": status,
                "ms": round(seconds * 1000, 1),
                "excerpt": clean,
                "entry": event.entry_id,
            }
            key = keys.attempt_log(org_id, event.event_id, sink_name)
            pipe.rpush(key, json.dumps(record, separators=(",", ":")))
            if attempt_no > 1:
                pipe.ltrim(key, -KEPT, -1)  # a first attempt leaves a list of one
            pipe.pexpire(key, self.ttl_ms)
        pipe.execute()


def read(
    client: redis.Redis, org_id: str, event_id: str, sink_names: Iterable[str]
) -> dict[str, list[Attempt]]:
    """Per sink name: the event's recorded attempts, oldest first (sinks without any left out)."""
    names = list(sink_names)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(keys.attempt_log(org_id, event_id, name), 0, -1)
    out: dict[str, list[Attempt]] = {}
    for name, rows in zip(names, pipe.execute(), strict=True):
        if rows:
            out[name] = [Attempt(**json.loads(row)) for row in rows]
    return out


def find_event(
    client: redis.Redis, settings: Settings, event_id: str, org_id: str | None = None
) -> tuple[str, OutboxEvent] | None:
    """The retained outbox entry of an event id: ``(org_id, event)``, or ``None``.

    The attempt log names the entry (one lookup); an event without attempts
    yet is searched for in the outboxes, newest first.
    """
    orgs = [org_id] if org_id else known_orgs(client)
    names = [s.name for s in settings.sinks]
    for org in orgs:
        for attempts in read(client, org, event_id, names).values():
            rows = client.xrange(keys.outbox(org), attempts[-1].entry, attempts[-1].entry)
            if rows:
                entry, fields = rows[0]
                return org, OutboxEvent(event_body(fields), text(entry))
    for org in orgs:
        for event in newest_first(client, org):
            if event.event_id == event_id:
                return org, event
    return None


def newest_first(client: redis.Redis, org_id: str) -> Iterator[OutboxEvent]:
    """The org's retained outbox events, newest first (read in chunks)."""
    cursor = "+"
    while True:
        rows = client.xrevrange(keys.outbox(org_id), cursor, "-", count=_SCAN_CHUNK)
        if not rows:
            return
        for entry, fields in rows:
            event = OutboxEvent(event_body(fields), text(entry))
            if event.body:
                yield event
        cursor = f"({text(rows[-1][0])}"  # exclusive: before the last one read


def booking_history(
    client: redis.Redis, org_id: str, booking_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    """A booking's change events still in the outbox, newest first (at most ``limit``)."""
    out: list[dict[str, Any]] = []
    for event in newest_first(client, org_id):
        try:
            envelope = event.envelope
        except FatalError:
            continue  # a malformed entry is nobody's booking
        if str(envelope.get("subject")) == booking_id and "booking" in str(envelope.get("type")):
            out.append(envelope)
            if len(out) >= limit:
                break
    return out


def show_lines(
    client: redis.Redis, settings: Settings, event_id: str, org_id: str | None = None
) -> list[str] | None:
    """``etbridge events show``: the event, then its attempts per sink; ``None``: not retained."""
    found = find_event(client, settings, event_id, org_id)
    if found is None:
        return None
    org, event = found
    committed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.committed_at))
    try:
        envelope: Any = event.envelope
        kind = envelope.get("type")
    except FatalError:
        envelope, kind = event.body.decode("utf-8", "replace"), "?"
    lines = [
        f"event {event_id}  org={org}  type={kind}  entry={event.entry_id}  committed={committed}"
    ]
    lines.append(json.dumps(envelope, indent=2, sort_keys=True, ensure_ascii=False))
    logged = read(client, org, event_id, [s.name for s in settings.sinks])
    for spec in settings.sinks:
        lines.append(f"sink {spec.display} [{spec.kind} {spec.name}]:")
        attempts = logged.get(spec.name)
        if not attempts:
            lines.append("  no attempt recorded (not sent yet, filtered out, or expired)")
        lines += [f"  {a.line()}" for a in attempts or []]
    return lines


def _change(name: str, change: Any) -> str:
    if isinstance(change, dict) and not isinstance(change.get("to"), dict | list):
        return f"{name}: {change.get('from')}→{change.get('to')}"
    return name


def history_lines(client: redis.Redis, org_id: str, booking_id: str, limit: int) -> list[str]:
    """``etbridge events list --org --booking``: one line per change event, newest first."""
    lines = []
    for env in booking_history(client, org_id, booking_id, limit):
        data = env.get("data")
        changes = data.get("changes") if isinstance(data, dict) else None
        changes = changes if isinstance(changes, dict) else {}
        summary = ", ".join(_change(n, c) for n, c in sorted(changes.items()))
        op = str(env.get("type", "")).rpartition(".")[2]
        line = f"{env.get('time', '?')}  {op:<8} {env.get('id')}"
        lines.append(f"{line}  {summary[:120]}" if summary else line)
    return lines
