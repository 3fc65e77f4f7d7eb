"""The planner's facts in Redis: what is queued, when each org was last planned, how active it is.

scheduler.py decides; this module reads the facts it decides on and records
what was decided and what came of it. Keys live under each org's hash tag.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import redis

from etbridge import keys, scheduler
from etbridge.state import iter_meta, text_hash

PLAN_LOCK = keys.PLAN_LOCK
DISCOVERY = keys.DISCOVERY
# A queued poll that no worker picked up within this long is planned again
# (its message may have been lost with a worker that had prefetched it).
QUEUED_TTL = 30.0
# Failure backoff of one org: 5 s doubling to 5 min.
FAILURE_BACKOFF = (5.0, 300.0)


plan_key = keys.plan


def take_tick(client: redis.Redis, tick: float) -> bool:
    """True for one caller per tick, fleet-wide: a second beat's tick plans nothing."""
    return bool(client.set(PLAN_LOCK, str(time.time()), nx=True, px=max(1, int(tick * 900))))


def _f(values: dict[str, str], name: str) -> float | None:
    raw = values.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def gather(
    client: redis.Redis, org_ids: Sequence[str], resource: str, now: float
) -> list[scheduler.OrgView]:
    """Build the planner's view of every org in three round trips."""
    metas = iter_meta(client, org_ids, resource)
    pipe = client.pipeline(transaction=False)
    for org_id in org_ids:
        pipe.hgetall(plan_key(org_id))
        pipe.exists(keys.lease(org_id))
    raw = pipe.execute()
    views = []
    for n, org_id in enumerate(org_ids):
        plan = text_hash(raw[2 * n])
        leased = bool(raw[2 * n + 1])
        meta = metas[org_id]
        queued_at = _f(plan, "queued_at")
        queued = queued_at is not None and now - queued_at < QUEUED_TTL
        busy = leased or queued
        activity = _f(plan, "activity") or 0.0
        activity_at = _f(plan, "activity_at") or now
        views.append(
            scheduler.OrgView(
                org_id=org_id,
                last_planned=_f(plan, "last_planned"),
                last_sweep=_f(meta, "last_sweep_at"),
                busy=busy,
                sweeping=busy and plan.get("mode") == "sweep",
                retry_at=_f(plan, "retry_at") or 0.0,
                activity=scheduler.decay(activity, now - activity_at),
                baselined=meta.get("baselined") == "1",
                # Resyncs, orgs without the incremental filter, and sweeps that paused
                # (or failed) half-way and resume from their saved cursor.
                needs_sweep=meta.get("filter_unsupported") == "1"
                or meta.get("resync") == "1"
                or meta.get("sweep_active") == "1",
                poll_pages=max(1.0, _f(plan, "poll_pages") or 1.0),
            )
        )
    return views


def mark_queued(client: redis.Redis, decisions: Sequence[scheduler.Decision], now: float) -> None:
    pipe = client.pipeline(transaction=False)
    for d in decisions:
        values: dict[Any, Any] = {"queued_at": str(now), "mode": d.mode}
        if d.mode == "incremental" or d.reason != "baseline":
            values["last_planned"] = str(now)
        pipe.hset(plan_key(d.org_id), mapping=values)
    pipe.execute()


def mark_started(client: redis.Redis, org_id: str) -> None:
    """The poll holds the lease now: the queued marker has done its job."""
    client.hdel(plan_key(org_id), "queued_at")


def record_success(client: redis.Redis, org_id: str, events: int, pages: int, mode: str) -> None:
    now = time.time()
    key = plan_key(org_id)
    current = text_hash(client.hgetall(key))
    activity = scheduler.decay(
        _f(current, "activity") or 0.0, now - (_f(current, "activity_at") or now)
    )
    values: dict[Any, Any] = {
        "activity": str(activity + events),
        "activity_at": str(now),
        "failures": "0",
        "retry_at": "0",
    }
    if mode == "incremental":
        # A running average of pages per incremental poll: the planner's cost estimate.
        old = _f(current, "poll_pages") or 1.0
        values["poll_pages"] = str(round(0.7 * old + 0.3 * max(1, pages), 3))
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=values)
    pipe.hdel(key, "queued_at", "last_failure")
    pipe.execute()


def forget_planned(client: redis.Redis, org_id: str) -> None:
    """A poll handed back by a worker that is shutting down: plan it again at once."""
    client.hdel(plan_key(org_id), "last_planned")


def record_failure(
    client: redis.Redis, org_id: str, error: str, retry_after: float | None = None
) -> float:
    """Back the org off (exponentially, or by the API's Retry-After); return the delay."""
    key = plan_key(org_id)
    failures = int(client.hincrby(key, "failures", 1))
    base, cap = FAILURE_BACKOFF
    delay = min(cap, base * math.pow(2, failures - 1))
    if retry_after is not None:
        delay = max(delay, retry_after)
    client.hset(
        key,
        mapping={"retry_at": str(time.time() + delay), "last_failure": error[:300]},
    )
    client.hdel(key, "queued_at")
    return delay


def request_resync(client: redis.Redis, org_id: str, resource: str) -> None:
    client.hset(keys.org_meta(org_id, resource), "resync", "1")


def plans(client: redis.Redis, org_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    pipe = client.pipeline(transaction=False)
    for org_id in org_ids:
        pipe.hgetall(plan_key(org_id))
    return {org_id: text_hash(raw) for org_id, raw in zip(org_ids, pipe.execute(), strict=True)}


def discovery_due(client: redis.Redis, every: float) -> bool:
    """True for one caller per ``every`` seconds, fleet-wide."""
    stamp = json.dumps({"at": time.time()})
    return bool(client.set(DISCOVERY, stamp, nx=True, px=max(1, int(every * 1000))))
