"""Per-sink facts in ``etb:sink:SINK``: disabled or not, last error, counters.

A sink is disabled by a ``410 Gone`` or by its circuit breaker (every attempt
failed for its ``disable_after``), and enabled
again by an operator (``etbridge sink enable``); a disabled sink's partitions
are not scheduled, and its events stay in the outbox within retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis

from etbridge import keys
from etbridge.outbox.due import due_member
from etbridge.outbox.retrystate import RetryState
from etbridge.outbox.streams import known_orgs, resolve_sink, text, wants_org
from etbridge.settings import Settings, SinkSpec

log = logging.getLogger("etbridge.outbox")


def disabled_names(client: redis.Redis, ks: keys.Keyspace, names: Iterable[str]) -> set[str]:
    """The sinks among ``names`` that are disabled now."""
    names = list(names)
    if not names:
        return set()
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hget(ks.sink_state(name), "disabled")
    return {n for n, flag in zip(names, pipe.execute(), strict=True) if flag}


def is_disabled(client: redis.Redis, ks: keys.Keyspace, sink_name: str) -> bool:
    return bool(client.hget(ks.sink_state(sink_name), "disabled"))


def disable(client: redis.Redis, ks: keys.Keyspace, spec: SinkSpec, reason: str) -> None:
    """Disable a sink (an ERROR line, so Sentry gets an event)."""
    now = time.time()
    client.hset(
        ks.sink_state(spec.name),
        mapping={
            "disabled": "1",
            "disabled_at": now,
            "disabled_reason": reason,
            "last_error": reason,
            "last_error_at": now,
        },
    )
    log.error("sink disabled sink=%s reason=%s", spec.display, reason)


def record_error(client: redis.Redis, ks: keys.Keyspace, spec: SinkSpec, error: str) -> None:
    client.hset(
        ks.sink_state(spec.name), mapping={"last_error": error, "last_error_at": time.time()}
    )


def note_failure(
    client: redis.Redis, ks: keys.Keyspace, spec: SinkSpec, error: str, now: float
) -> bool:
    """Record a failed attempt; True when the circuit breaker trips (then disable the sink).

    The breaker counts from the first failure after the last accepted event
    (``failing_since``); it trips once every attempt failed for the sink's
    ``disable_after``.
    """
    pipe = client.pipeline(transaction=False)
    pipe.hset(ks.sink_state(spec.name), mapping={"last_error": error, "last_error_at": now})
    pipe.hsetnx(ks.sink_state(spec.name), "failing_since", repr(now))
    pipe.hget(ks.sink_state(spec.name), "failing_since")
    since = float(pipe.execute()[2] or now)
    return spec.disable_after is not None and now - since >= spec.disable_after


def record_run(
    client: redis.Redis, ks: keys.Keyspace, spec: SinkSpec, delivered: int, dead_lettered: int
) -> None:
    """Add a run's counts to the sink's counters; a delivery resets the breaker."""
    if not (delivered or dead_lettered):
        return
    pipe = client.pipeline(transaction=False)
    if delivered:
        pipe.hincrby(ks.sink_state(spec.name), "delivered", delivered)
        pipe.hset(ks.sink_state(spec.name), "last_delivered_at", repr(time.time()))
        pipe.hdel(ks.sink_state(spec.name), "failing_since")
    if dead_lettered:
        pipe.hincrby(ks.sink_state(spec.name), "dead_lettered", dead_lettered)
    pipe.execute()


def enable_sink(client: redis.Redis, settings: Settings, sink: str | SinkSpec) -> None:
    """Re-enable a disabled sink; its orgs become due at once.

    Delivery resumes with the event that was refused (it was not acked), its
    retries due now on a fresh schedule; the breaker counts anew.
    """
    spec = resolve_sink(settings, sink)
    client.hdel(
        settings.keyspace.sink_state(spec.name),
        "disabled",
        "disabled_at",
        "disabled_reason",
        "failing_since",
    )
    orgs = [o for o in known_orgs(client, settings.keyspace) if wants_org(spec, o)]
    pipe = client.pipeline(transaction=False)
    for org_id in orgs:
        pipe.hgetall(settings.keyspace.relay_partition(org_id, spec.name))
    states = pipe.execute()
    for org_id, fields in zip(orgs, states, strict=True):
        state = RetryState(
            {text(k): text(v) for k, v in fields.items()}, strict=spec.order == "strict"
        )
        gone = list(state.resumed())
        if gone:
            pipe.hdel(settings.keyspace.relay_partition(org_id, spec.name), *gone)
    members = {due_member(o, spec.name): time.time() for o in orgs}
    if members:
        pipe.zadd(settings.keyspace.relay_due, members)
    pipe.execute()
    log.info("sink enabled sink=%s", spec.display)
