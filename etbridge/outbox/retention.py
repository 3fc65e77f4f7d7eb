"""Outbox retention: trim what every sink acknowledged once it is older than the retention."""

from __future__ import annotations

import logging
import time
from typing import Final

import redis

from etbridge.outbox.sinkstate import disabled_names
from etbridge.outbox.streams import (
    group_infos,
    group_name,
    known_orgs,
    next_id,
    stream_id,
    text,
    wants_org,
)
from etbridge.settings import Settings

log = logging.getLogger("etbridge.outbox")

# Consumers with nothing pending and idle this long are removed by trim().
_CONSUMER_IDLE_MS: Final = 86400 * 1000


def trim(client: redis.Redis, settings: Settings, *, now: float | None = None) -> int:
    """Outbox retention: drop events older than ``outbox_retention`` that every sink acked.

    Per org, ``XTRIM MINID`` to the oldest of: the retention cut-off, and for
    each configured, enabled sink that takes the org, the oldest event its
    group has not acknowledged (an org whose group does not exist yet keeps
    everything). Disabled sinks do not hold the outbox back, so a sink that
    answered 410 cannot grow Redis without bound; once re-enabled it resumes
    with what is still retained. Also removes consumers idle for a day with
    nothing pending. Returns the number of events removed.
    """
    now = time.time() if now is None else now
    cutoff = f"{int((now - settings.outbox_retention) * 1000)}-0"
    orgs = known_orgs(client, settings.keyspace)
    if not orgs:
        return 0
    specs = list(settings.sinks)
    disabled = disabled_names(client, settings.keyspace, [s.name for s in specs])
    removed = 0
    for org_id, (length, groups) in group_infos(client, settings.keyspace, orgs).items():
        if length == 0:
            continue
        stream = settings.keyspace.outbox(org_id)
        bound = cutoff
        for spec in specs:
            if spec.name in disabled or not wants_org(spec, org_id):
                continue
            info = groups.get(group_name(spec.name))
            if info is None:
                bound = "0-0"
                break
            if int(info.get("pending") or 0) > 0:
                oldest = text(client.xpending(stream, group_name(spec.name)).get("min"))
            else:
                oldest = next_id(text(info.get("last-delivered-id")) or "0-0")
            if stream_id(oldest) < stream_id(bound):
                bound = oldest
        if stream_id(bound) > (0, 0):
            removed += int(client.xtrim(stream, minid=bound, approximate=False))
        for name in groups:
            _drop_idle_consumers(client, stream, name)
    if removed:
        log.info("outbox trimmed events=%d orgs=%d", removed, len(orgs))
    return removed


def _drop_idle_consumers(client: redis.Redis, stream: str, group: str) -> None:
    for consumer in client.xinfo_consumers(stream, group):
        if (
            int(consumer.get("pending") or 0) == 0
            and int(consumer.get("idle") or 0) > _CONSUMER_IDLE_MS
        ):
            client.xgroup_delconsumer(stream, group, text(consumer.get("name")))
