"""Replay: send retained outbox events again to a sink, with their ids, in commit order."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis

from etbridge.errors import EtbridgeError, FatalError
from etbridge.outbox.sinkcache import SinkCache
from etbridge.outbox.streams import event_body, next_id, resolve_sink, text, wants_org
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import OutboxEvent, route

if TYPE_CHECKING:
    import celery
    import requests

log = logging.getLogger("etbridge.outbox")


def replay(
    client: redis.Redis,
    settings: Settings,
    sink: str | SinkSpec,
    since: datetime,
    org_id: str | None = None,
    *,
    broker_app: celery.Celery | None = None,
    session: requests.Session | None = None,
) -> int:
    """Re-send retained outbox events committed at or after ``since``, same ids.

    ``sink`` is a configured sink (name, URL, display URL) or any sink URL;
    its routing filter applies. Events go out in commit order per org,
    directly (not through the partitions' retry state), so a replay does not
    wait behind a retrying event. A failure stops the replay and propagates
    (the note says how many were sent). Returns the number of events sent.
    """
    spec = resolve_sink(settings, sink)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    start = f"{int(since.timestamp() * 1000)}-0"
    known = {text(o) for o in client.hkeys(settings.keyspace.orgs)} | set(settings.orgs)
    orgs = [org_id] if org_id else sorted(known)
    targets = SinkCache(client, settings, broker_app=broker_app, session=session)
    target = targets.get(spec)
    sent = 0
    try:
        for org in orgs:
            if not wants_org(spec, org):
                continue
            cursor = start
            while True:
                rows = client.xrange(settings.keyspace.outbox(org), cursor, "+", count=500)
                if not rows:
                    break
                events = [OutboxEvent(event_body(f), text(i)) for i, f in rows]
                cursor = next_id(events[-1].entry_id)
                chosen = [e for e in events if e.body and _routable(spec, e)]
                for offset in range(0, len(chosen), target.max_batch):
                    chunk = chosen[offset : offset + target.max_batch]
                    try:
                        target.send_many(chunk, 1)
                    except EtbridgeError as exc:
                        exc.add_note(f"replay to {spec.display} stopped after {sent} events")
                        raise
                    sent += len(chunk)
    finally:
        targets.close()
    log.info("replay sink=%s since=%s org_id=%s events=%d", spec.display, start, org_id, sent)
    return sent


def _routable(spec: SinkSpec, event: OutboxEvent) -> bool:
    try:
        return spec.filter.is_empty or route(spec.filter, event.envelope)
    except FatalError:
        return False
