"""The attempt log: the last delivery attempts of each event at each sink, for operators.

One hash per (org, sink, UTC day), ``etb:{org:ID}:attempts:SINK:DAY``: event
id -> JSON list of records ``{at, attempt, ok, status, ms, excerpt, entry}``
(the newest :data:`KEPT` per day); a day's hash expires once the outbox
retention has passed after it. One field per event, no key per event: cheap
enough for every event of a batch sink. Excerpts are short and scrubbed.
``etbridge events show`` and ``events list`` read it here, with the outbox.
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


DAY: Final = 86400


def _day(at: float) -> int:
    return int(at // DAY)


# KEYS[1] the day's hash (one org: one hash tag)
# ARGV[1] expire at (epoch ms)  ARGV[2] kept  ARGV[3] the first event's record
# ARGV[4] the others' record (their first attempt), both JSON objects without
# "entry"; ARGV[5..] pairs of event id, entry id.
# Appends one record per event to its list, keeps the newest `kept`.
# One call per chunk: a batch of 500 events costs one round trip.
_RECORD = """
local kept = tonumber(ARGV[2])
for i = 5, #ARGV, 2 do
  local base = (i == 5) and ARGV[3] or ARGV[4]
  local record = string.sub(base, 1, -2) .. ',"entry":"' .. ARGV[i + 1] .. '"}'
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if current then
    local list = cjson.decode(current)
    table.insert(list, cjson.decode(record))
    while #list > kept do table.remove(list, 1) end
    redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(list))
  else
    redis.call('HSET', KEYS[1], ARGV[i], '[' .. record .. ']')
  end
end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""


class AttemptLog:
    """Writes attempts: one script call per chunk, one hash field per event."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.ks = settings.keyspace
        self.retention = settings.outbox_retention
        self._record = client.register_script(_RECORD)

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
        if not events:
            return
        now = time.time()
        base = {
            "at": round(now, 3),
            "attempt": attempt_no,
            "ok": ok,
            "status": status,
            "ms": round(seconds * 1000, 1),
            "excerpt": scrub(excerpt) if excerpt else "",
        }
        first = json.dumps(base, separators=(",", ":"))
        others = json.dumps({**base, "attempt": 1}, separators=(",", ":"))
        day = _day(now)
        expire_at = int(((day + 1) * DAY + self.retention) * 1000)
        args: list[str | int] = [expire_at, KEPT, first, others]
        for event in events:
            args += [event.event_id, event.entry_id]
        self._record(keys=[self.ks.attempt_log(org_id, sink_name, day)], args=args)


def read(
    client: redis.Redis,
    settings: Settings,
    org_id: str,
    event_id: str,
    sink_names: Iterable[str],
) -> dict[str, list[Attempt]]:
    """Per sink name: the event's recorded attempts, oldest first (sinks without any left out)."""
    names = list(sink_names)
    today = _day(time.time())
    days = range(today - int(settings.outbox_retention // DAY) - 1, today + 1)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for day in days:
            pipe.hget(settings.keyspace.attempt_log(org_id, name, day), event_id)
    answers = iter(pipe.execute())
    out: dict[str, list[Attempt]] = {}
    for name in names:
        found: list[Attempt] = []
        for _day_no in days:
            raw = next(answers)
            if raw:
                found += [Attempt(**row) for row in json.loads(raw)]
        if found:
            out[name] = sorted(found, key=lambda a: a.at)[-KEPT:]
    return out


def find_event(
    client: redis.Redis, settings: Settings, event_id: str, org_id: str | None = None
) -> tuple[str, OutboxEvent] | None:
    """The retained outbox entry of an event id: ``(org_id, event)``, or ``None``.

    The attempt log names the entry (one lookup); an event without attempts
    yet is searched for in the outboxes, newest first.
    """
    orgs = [org_id] if org_id else known_orgs(client, settings.keyspace)
    names = [s.name for s in settings.sinks]
    for org in orgs:
        for attempts in read(client, settings, org, event_id, names).values():
            rows = client.xrange(
                settings.keyspace.outbox(org), attempts[-1].entry, attempts[-1].entry
            )
            if rows:
                entry, fields = rows[0]
                return org, OutboxEvent(event_body(fields), text(entry))
    for org in orgs:
        for event in newest_first(client, settings.keyspace, org):
            if event.event_id == event_id:
                return org, event
    return None


def newest_first(client: redis.Redis, ks: keys.Keyspace, org_id: str) -> Iterator[OutboxEvent]:
    """The org's retained outbox events, newest first (read in chunks)."""
    cursor = "+"
    while True:
        rows = client.xrevrange(ks.outbox(org_id), cursor, "-", count=_SCAN_CHUNK)
        if not rows:
            return
        for entry, fields in rows:
            event = OutboxEvent(event_body(fields), text(entry))
            if event.body:
                yield event
        cursor = f"({text(rows[-1][0])}"  # exclusive: before the last one read


def booking_history(
    client: redis.Redis, ks: keys.Keyspace, org_id: str, booking_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    """A booking's change events still in the outbox, newest first (at most ``limit``)."""
    out: list[dict[str, Any]] = []
    for event in newest_first(client, ks, org_id):
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
    logged = read(client, settings, org, event_id, [s.name for s in settings.sinks])
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


def history_lines(
    client: redis.Redis, ks: keys.Keyspace, org_id: str, booking_id: str, limit: int
) -> list[str]:
    """``etbridge events list --org --booking``: one line per change event, newest first."""
    lines = []
    for env in booking_history(client, ks, org_id, booking_id, limit):
        data = env.get("data")
        changes = data.get("changes") if isinstance(data, dict) else None
        changes = changes if isinstance(changes, dict) else {}
        summary = ", ".join(_change(n, c) for n, c in sorted(changes.items()))
        op = str(env.get("type", "")).rpartition(".")[2]
        line = f"{env.get('time', '?')}  {op:<8} {env.get('id')}"
        lines.append(f"{line}  {summary[:120]}" if summary else line)
    return lines
