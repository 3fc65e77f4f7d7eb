"""Helpers for the delivery tests: envelopes, commits to the outbox, settings, a relay loop.

Tests write events into the outbox stream directly, as the poller's commit
does (``XADD etb:{org:ID}:outbox * event <envelope JSON>``), and register the
org in ``etb:orgs``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from etbridge import keys
from etbridge.outbox import Relay
from etbridge.settings import Settings, parse_sink
from tests.support import replies

SECRET = "whsec_" + base64.b64encode(b"etbridge-test-webhook-key-0123").decode()


def envelope(
    org_id: str,
    booking_id: str,
    op: str = "updated",
    *,
    changes: dict[str, Any] | None = None,
    seq: int = 0,
) -> dict[str, Any]:
    """A CloudEvents envelope in the contract's shape (ids unique per org/booking/op/seq)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if changes is None:
        changes = {"status": {"from": "tentative", "to": "definite"}} if op == "updated" else {}
    event_id = hashlib.sha256(f"{org_id}/{booking_id}/{op}/{seq}".encode()).hexdigest()[:32]
    before = (
        None
        if op in ("created", "snapshot")
        else {"id": booking_id, "type": "bookings", "attributes": {}}
    )
    after = None if op == "deleted" else {"id": booking_id, "type": "bookings", "attributes": {}}
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/orgs/{org_id}/bookings",
        "type": f"com.eventtemple.booking.{op}",
        "subject": booking_id,
        "time": now,
        "datacontenttype": "application/json",
        "orgid": org_id,
        "data": {
            "org_id": org_id,
            "resource": "bookings",
            "id": booking_id,
            "before": before,
            "after": after,
            "changes": changes,
            "detected_at": now,
        },
    }


def commit(client: redis.Redis, org_id: str, envelopes: Iterable[dict[str, Any]]) -> list[str]:
    """Append envelopes to the org's outbox (one pipeline) and register the org.

    Not a transaction: the registry and the outbox are in different hash slots
    on a cluster (tests/engines/); the org's own appends still go in order.
    """
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.DEFAULT.orgs, org_id, json.dumps({"name": f"org {org_id}"}))
    for env in envelopes:
        pipe.xadd(keys.DEFAULT.outbox(org_id), {"event": json.dumps(env, separators=(",", ":"))})
    answers = pipe.execute()
    return [a.decode() if isinstance(a, bytes) else str(a) for a in answers[1:]]


def commit_events(
    client: redis.Redis, org_id: str, count: int, *, start: int = 0, op: str = "updated"
) -> list[dict[str, Any]]:
    """Commit ``count`` updated events for one org; returns their envelopes in order."""
    envs = [envelope(org_id, str(100 + n % 7), op, seq=start + n) for n in range(count)]
    commit(client, org_id, envs)
    return envs


def make_settings(redis_url: str, sinks: Sequence[str], **overrides: Any) -> Settings:
    """Settings for a test: no environment, no .env file, the given sink URLs."""
    values: dict[str, Any] = {
        "client_id": "test-client",
        "client_secret": "test-client-secret",
        "redis_url": redis_url,
        "sinks": [parse_sink(url) for url in sinks],
        "webhook_secret": SECRET,
        "retry_schedule": [0.0, 0.2, 0.5],
        "webhook_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def drive(
    relay: Relay,
    until: Callable[[], bool],
    *,
    notify: Iterable[str] = (),
    timeout: float = 30.0,
    poll: float = 0.02,
) -> None:
    """Play the poller's notify, beat's tick and the deliver tasks until ``until()`` holds.

    ``notify``: org ids whose partitions are notified first (and delivered at
    once, as the poller's enqueue would). ``TimeoutError`` after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    for org_id in notify:
        for org, sink_name in relay.notify(org_id):
            relay.deliver(org, sink_name)
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(f"delivery condition not met within {timeout}s")
        for org_id, sink_name in relay.due():
            relay.deliver(org_id, sink_name)
        time.sleep(poll)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(poll)


def relay_loop(
    redis_url: str,
    sinks: Sequence[str],
    stop_key: str,
    overrides: dict[str, Any],
    claim_margin: float,
) -> None:
    """A relay worker process: due/deliver until ``stop_key`` exists (multiprocessing target)."""
    client = redis.Redis.from_url(redis_url)
    relay = Relay(client, make_settings(redis_url, sinks, **overrides), claim_margin=claim_margin)
    try:
        while not client.exists(stop_key):
            for org_id, sink_name in relay.due():
                relay.deliver(org_id, sink_name)
            time.sleep(0.01)
    finally:
        relay.close()
        client.close()


def stream_events(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The envelopes in a sink stream, in order."""
    return replies.stream_events(client, key)
