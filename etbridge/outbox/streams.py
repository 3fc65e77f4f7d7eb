"""Reading the outbox streams: stream ids, consumer groups, entries, and sink lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from etbridge import keys
from etbridge.settings import Settings, SinkSpec, parse_sink


def text(value: Any) -> str:
    """A Redis answer (bytes, str, number or None) as text."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def stream_id(value: str) -> tuple[int, int]:
    millis, _, seq = value.partition("-")
    return int(millis), int(seq or 0)


def next_id(value: str) -> str:
    """The stream id right after ``value`` (for exclusive ranges)."""
    millis, seq = stream_id(value)
    return f"{millis}-{seq + 1}"


def iso(value: str | float | None) -> str | None:
    """An epoch-seconds value as RFC 3339 UTC (``None`` when unset or unreadable)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def group_name(sink_name: str) -> str:
    """The consumer group of a sink on every outbox stream."""
    return f"sink:{sink_name}"


def wants_org(spec: SinkSpec, org_id: str) -> bool:
    """Whether the sink's ``orgs=`` filter lets this org's events through."""
    return not spec.filter.orgs or org_id in spec.filter.orgs


def resolve_sink(settings: Settings, ref: str | SinkSpec) -> SinkSpec:
    """A configured sink by name, URL or display URL; else ``ref`` parsed as a sink URL."""
    if isinstance(ref, SinkSpec):
        return ref
    for spec in settings.sinks:
        if ref in (spec.name, spec.url, spec.display):
            return spec
    return parse_sink(ref)


def event_body(fields: Any) -> bytes:
    """The ``event`` field of an outbox entry (``b""`` when missing)."""
    if not fields:
        return b""
    value = fields.get(b"event", fields.get("event"))
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode()


def known_orgs(client: redis.Redis, ks: keys.Keyspace) -> list[str]:
    """Every org registered in ``etb:orgs``, sorted."""
    return sorted(text(o) for o in client.hkeys(ks.orgs))


def group_infos(
    client: redis.Redis, ks: keys.Keyspace, orgs: Sequence[str]
) -> dict[str, tuple[int, dict[str, dict[str, Any]]]]:
    """Per org: outbox length and its consumer groups (``XINFO GROUPS``) by name."""
    pipe = client.pipeline(transaction=False)
    for org_id in orgs:
        pipe.xlen(ks.outbox(org_id))
        pipe.xinfo_groups(ks.outbox(org_id))
    answers = pipe.execute(raise_on_error=False)
    out: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}
    for index, org_id in enumerate(orgs):
        length, groups = answers[2 * index], answers[2 * index + 1]
        by_name: dict[str, dict[str, Any]] = {}
        if isinstance(groups, list):
            for info in groups:
                by_name[text(info.get("name"))] = dict(info)
        out[org_id] = (length if isinstance(length, int) else 0, by_name)
    return out


def unread(
    client: redis.Redis, ks: keys.Keyspace, org_id: str, info: Mapping[str, Any], length: int
) -> int:
    """Entries the group has not read yet (``lag``, counted when Redis cannot say)."""
    lag = info.get("lag")
    if lag is not None:
        return int(lag)
    last = text(info.get("last-delivered-id")) or "0-0"
    rows = client.xrange(ks.outbox(org_id), f"({last}", "+", count=max(length, 1))
    return len(rows or [])
