"""What happened to one booking: its change events and, per sink, whether each was delivered.

Reads Redis only (the console's booking page): the org's outbox stream (kept
for ``ETBRIDGE_OUTBOX_RETENTION``), each sink's consumer group on it and its
dead letters, and the attempt log (when and how each attempt went). An
event is *delivered* to a sink once the sink's group read it and
acknowledged it, *pending* before, *dead-lettered* while it sits in the
sink's dead-letter stream, and *filtered* when the sink's routing filter
does not want it (which counts as delivered).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from etbridge import keys, outbox
from etbridge.outbox import attempts as attempt_log
from etbridge.outbox.attempts import Attempt
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import route

DELIVERED = "delivered"
PENDING = "pending"
DEAD_LETTERED = "dead-lettered"
FILTERED = "filtered"

_SCAN = 1000


@dataclass(frozen=True)
class Delivery:
    sink: str  # display URL, password masked
    state: str
    attempts: tuple[Attempt, ...] = ()  # from the attempt log, oldest first


@dataclass
class TimelineEvent:
    entry_id: str
    id: str
    type: str
    time: str
    detected_at: str
    changes: dict[str, Any]
    deliveries: list[Delivery] = field(default_factory=list)


def _sid(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms or 0), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _events_of(
    client: redis.Redis, ks: keys.Keyspace, org_id: str, booking_id: str
) -> list[tuple[str, dict[str, Any]]]:
    """(entry id, envelope) of every outbox entry about the booking, oldest first."""
    found = []
    start = "-"
    while True:
        rows = client.xrange(ks.outbox(org_id), start, "+", count=_SCAN) or []
        for entry_id, fields in rows:
            raw = (fields or {}).get(b"event")
            try:
                envelope = json.loads(raw) if raw else None
            except ValueError:
                continue
            if isinstance(envelope, dict) and str(envelope.get("subject")) == booking_id:
                found.append((_text(entry_id), envelope))
        if len(rows) < _SCAN:
            return found
        start = "(" + _text(rows[-1][0])


def _state(
    client: redis.Redis,
    ks: keys.Keyspace,
    spec: SinkSpec,
    org_id: str,
    entry_id: str,
    envelope: dict[str, Any],
    group: dict[str, Any] | None,
    dead: set[str],
) -> str:
    if not outbox.wants_org(spec, org_id) or (
        not spec.filter.is_empty and not route(spec.filter, envelope)
    ):
        return FILTERED
    if str(envelope.get("id")) in dead:
        return DEAD_LETTERED
    if group is None:
        return PENDING
    last = _text(group.get("last-delivered-id") or "0-0")
    if _sid(entry_id) > _sid(last):
        return PENDING
    in_flight = client.xpending_range(
        ks.outbox(org_id), outbox.group_name(spec.name), min=entry_id, max=entry_id, count=1
    )
    return PENDING if in_flight else DELIVERED


def booking_timeline(
    client: redis.Redis, settings: Settings, org_id: str, booking_id: str
) -> list[TimelineEvent]:
    """Every retained change event of one booking, with its delivery state per sink."""
    events = _events_of(client, settings.keyspace, org_id, booking_id)
    if not events:
        return []
    groups: dict[str, dict[str, Any]] = {}
    try:
        for info in client.xinfo_groups(settings.keyspace.outbox(org_id)):
            groups[_text(info.get("name"))] = dict(info)
    except redis.exceptions.ResponseError:
        pass  # no stream yet
    dead: dict[str, set[str]] = {}
    for letter in outbox.dlq_list(client, settings):
        dead.setdefault(letter.sink_name, set()).add(letter.event_id)
    names = [s.name for s in settings.sinks]
    out = []
    for entry_id, envelope in events:
        data = envelope.get("data") or {}
        item = TimelineEvent(
            entry_id=entry_id,
            id=str(envelope.get("id", "")),
            type=str(envelope.get("type", "")).removeprefix("com.eventtemple.booking."),
            time=str(envelope.get("time", "")),
            detected_at=str(data.get("detected_at", "")),
            changes=dict(data.get("changes") or {}),
        )
        logged = attempt_log.read(client, settings, org_id, item.id, names)
        for spec in settings.sinks:
            state = _state(
                client,
                settings.keyspace,
                spec,
                org_id,
                entry_id,
                envelope,
                groups.get(outbox.group_name(spec.name)),
                dead.get(spec.name, set()),
            )
            tried = tuple(logged.get(spec.name, ()))
            item.deliveries.append(Delivery(spec.display, state, tried))
        out.append(item)
    return out
