"""The relay's part of ``etbridge status``: per sink pending, retrying, dead-lettered, disabled."""

from __future__ import annotations

from typing import Any

import redis

from etbridge.outbox.deadletters import WARN_FILL, fill
from etbridge.outbox.retrystate import RetryState
from etbridge.outbox.streams import (
    group_infos,
    group_name,
    iso,
    known_orgs,
    text,
    unread,
    wants_org,
)
from etbridge.settings import Settings


def status(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Per sink: pending, retrying, dead-lettered, disabled, last error. Only reads Redis.

    Returns ``{"outbox": {pending, retrying, dead_lettered}, "sinks": {display
    URL: {...}}}``: the totals over all sinks, and the facts of each sink.
    ``pending`` counts events the sink has not accepted yet (unread, or read
    but unacknowledged) over all orgs; ``retrying`` the orgs whose head event
    waits for a retry (``order=none``: the events that wait for their own).
    Sinks appear by display URL (password masked); times are RFC 3339 UTC.
    """
    orgs = known_orgs(client, settings.keyspace)
    infos = group_infos(client, settings.keyspace, orgs) if orgs else {}
    specs = list(settings.sinks)
    pipe = client.pipeline(transaction=False)
    for spec in specs:
        pipe.hgetall(settings.keyspace.sink_state(spec.name))
        pipe.xlen(settings.keyspace.dead_letters(spec.name))
        for org_id in orgs:
            pipe.hgetall(settings.keyspace.relay_partition(org_id, spec.name))
    answers = iter(pipe.execute())
    sinks: dict[str, dict[str, Any]] = {}
    totals = {"pending": 0, "retrying": 0, "dead_lettered": 0}
    for spec in specs:
        sink_state = {text(k): text(v) for k, v in next(answers).items()}
        dead = int(next(answers))
        pending = 0
        retrying = 0
        for org_id in orgs:
            fields = {text(k): text(v) for k, v in next(answers).items()}
            if not wants_org(spec, org_id):
                continue
            retrying += RetryState(fields, strict=spec.order == "strict").retrying()
            length, groups = infos[org_id]
            info = groups.get(group_name(spec.name))
            if info is None:
                pending += length
            else:
                pending += int(info.get("pending") or 0) + unread(
                    client, settings.keyspace, org_id, info, length
                )
        entry = {
            "name": spec.name,
            "kind": spec.kind,
            "pending": pending,
            "retrying": retrying,
            "dead_lettered": dead,
            "dead_letter_fill": fill(settings, dead),
            "dead_letters_dropped": int(sink_state.get("dead_letters_dropped") or 0),
            "disabled": bool(sink_state.get("disabled")),
            "disabled_reason": sink_state.get("disabled_reason") or None,
            "disabled_at": iso(sink_state.get("disabled_at")),
            "last_error": sink_state.get("last_error") or None,
            "last_error_at": iso(sink_state.get("last_error_at")),
            "delivered": int(sink_state.get("delivered") or 0),
            "last_delivered_at": iso(sink_state.get("last_delivered_at")),
            "failing_since": iso(sink_state.get("failing_since")),
            "order": spec.order,
            "rate_per_s": spec.rate,
        }
        sinks[spec.display] = entry
        totals["pending"] += pending
        totals["retrying"] += retrying
        totals["dead_lettered"] += dead
    warnings = [
        f"sink {url}: dead letters at {entry['dead_letter_fill']:.0%} of ETBRIDGE_DLQ_MAXLEN"
        " (the oldest are dropped past it): redeliver or purge them"
        for url, entry in sinks.items()
        if entry["dead_letter_fill"] >= WARN_FILL
    ]
    warnings += [
        f"sink {url} is disabled: {entry['disabled_reason'] or 'see etbridge status'}"
        for url, entry in sinks.items()
        if entry["disabled"]
    ]
    return {"outbox": totals, "sinks": sinks, "warnings": warnings}
