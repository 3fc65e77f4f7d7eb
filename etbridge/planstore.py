"""The planner's facts in Redis: per (org, resource) deadlines, estimates, queue marks, backoff.

scheduler.py decides; this module reads the facts it decides on and records
what was decided and what came of it. Keys live under each org's hash tag.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from etbridge import backoff, keys, scheduler
from etbridge.scheduler import RateEstimate
from etbridge.state import text, text_hash

# A queued poll that no worker started within this long is planned again
# (its message may have been lost with a worker that had prefetched it).
QUEUED_TTL = 15.0
# Failure backoff of one unit: 5 s doubling to 5 min.
FAILURE_BACKOFF = (5.0, 300.0)
# Dispatch delays (due -> poll started) kept for status and the benchmark.
DELAYS_KEPT = 2000


def take_tick(client: redis.Redis, ks: keys.Keyspace, tick: float) -> bool:
    """True for one caller per tick, fleet-wide: a second beat's tick plans nothing."""
    return bool(client.set(ks.plan_lock, str(time.time()), nx=True, px=max(1, int(tick * 900))))


def _num(raw: bytes | str | None) -> float | None:
    """A stored number, or None when missing or bad (float() reads bytes as it reads text)."""
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _f(values: dict[str, str], name: str) -> float | None:
    return _num(values.get(name))


def _estimate(values: dict[str, str], prefix: str) -> RateEstimate:
    events = _f(values, f"{prefix}_n") or 0.0
    seconds = _f(values, f"{prefix}_t") or 0.0
    return RateEstimate(events, seconds, _f(values, f"{prefix}_at"))


def _estimate_fields(prefix: str, est: RateEstimate) -> dict[str, str]:
    return {
        f"{prefix}_n": repr(est.events),
        f"{prefix}_t": repr(est.seconds),
        f"{prefix}_at": repr(est.at if est.at is not None else time.time()),
    }


# The fields a tick reads, with HMGET (not HGETALL: a unit's hashes hold more,
# and decoding all of it was most of a tick's cost), in one pipeline of plain
# commands: a Redis Cluster pipeline takes these, not scripts.
_META_FIELDS = (
    "baselined",
    "resync",
    "sweep_active",
    "filter_unsupported",
    "last_poll_at",
    "last_sweep_at",
)
_PLAN_FIELDS = (
    "queued_at",
    "retry_at",
    "poll_due",
    "sweep_due",
    "chg_n",
    "chg_t",
    "chg_at",
    "del_n",
    "del_t",
    "del_at",
    "poll_pages",
    "sweep_pages",
    "seen_at",
)


def gather(
    client: redis.Redis,
    ks: keys.Keyspace,
    org_ids: Sequence[str],
    resources: Sequence[str],
    now: float,
) -> list[scheduler.UnitView]:
    """The planner's view of every (org, resource) unit, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for org_id in org_ids:
        pipe.exists(ks.lease(org_id))
        for res in resources:
            pipe.hmget(ks.org_meta(org_id, res), _META_FIELDS)
            pipe.hmget(ks.plan(org_id, res), _PLAN_FIELDS)
    replies = iter(pipe.execute())
    views = []
    for org_id in org_ids:
        leased = bool(next(replies))
        facts = [(res, next(replies), [_num(v) for v in next(replies)]) for res in resources]
        queued = [now - (plan[0] or -math.inf) < QUEUED_TTL for *_, plan in facts]
        busy = leased or any(queued)
        for (res, meta, plan), unit_queued in zip(facts, queued, strict=True):
            _, retry_at, poll_due, sweep_due, chg_n, chg_t, chg_at, del_n, del_t, del_at = plan[:10]
            poll_pages, sweep_pages, seen_at = plan[10:]
            last_listed, last_swept = _num(meta[4]), _num(meta[5])
            views.append(
                scheduler.UnitView(
                    org_id=org_id,
                    resource=res,
                    busy=busy,
                    queued=unit_queued,
                    retry_at=retry_at or 0.0,
                    baselined=meta[0] == b"1",
                    urgent_sweep=meta[1] == b"1",
                    sweeping=meta[2] == b"1",
                    sweeps_only=meta[3] == b"1",
                    last_poll_due=poll_due,
                    last_listed=last_listed,
                    # A unit the planner has not swept yet counts from its last full
                    # listing (its baseline, a tool's): a fleet does not sweep every
                    # unit at once on its first tick.
                    last_sweep_due=sweep_due if sweep_due is not None else last_swept,
                    changes=RateEstimate(chg_n or 0.0, chg_t or 0.0, chg_at),
                    deletions=RateEstimate(del_n or 0.0, del_t or 0.0, del_at),
                    poll_pages=max(1.0, poll_pages or 1.0),
                    sweep_pages=max(1.0, sweep_pages or 1.0),
                    first_seen=seen_at,
                )
            )
    return views


def note_seen(
    client: redis.Redis, ks: keys.Keyspace, units: Sequence[scheduler.UnitView], now: float
) -> None:
    """When the planner first saw each unit that has no baseline yet (kept: HSETNX).

    A baseline is then ordered by how long it has waited, like a late poll: when
    the workers bind, new orgs are not left behind every poll that fell due.
    """
    new = [u for u in units if not u.baselined and u.first_seen is None]
    if new:
        pipe = client.pipeline(transaction=False)
        for u in new:
            pipe.hsetnx(ks.plan(u.org_id, u.resource), "seen_at", repr(now))
        pipe.execute()


def mark_queued(
    client: redis.Redis,
    ks: keys.Keyspace,
    decisions: Sequence[scheduler.Decision],
    now: float,
    next_send: float = 0.0,
) -> None:
    """Mark the units queued, note their deadlines, and where the next tick's sends start."""
    pipe = client.pipeline(transaction=False)
    if next_send > now:
        pipe.set(ks.plan_cursor, repr(next_send), px=int((next_send - now) * 1000) + 1)
    for d in decisions:
        values: dict[Any, Any] = {"queued_at": repr(now), "mode": d.mode}
        # The next deadline counts from the anchor (the deadline of a poll sent
        # early, the send time of one sent late: Decision.anchor). A sweep's later
        # pages keep the deadline of its first.
        if d.mode == "incremental":
            values["poll_due"] = repr(d.anchor)
        elif d.reason != scheduler.Reason.SWEEP_PAGE:
            values["sweep_due"] = repr(d.anchor)
        pipe.hset(ks.plan(d.org_id, d.resource), mapping=values)
    pipe.execute()


def record_summary(client: redis.Redis, ks: keys.Keyspace, summary: dict[str, Any]) -> None:
    """The last allocation's fleet-wide figures and warnings (the planner logs changes once)."""
    client.set(ks.plan_summary, json.dumps(summary))


# Push the send cursor past requests made outside the plan: max(cursor, now) + extra.
_RESERVE_SENDS = """
local now = tonumber(ARGV[1])
local at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') or 0, now)
local until_at = at + tonumber(ARGV[2])
redis.call('SET', KEYS[1], tostring(until_at), 'PX', math.ceil((until_at - now) * 1000) + 1)
return tostring(until_at)
"""


def reserve_sends(client: redis.Redis, ks: keys.Keyspace, requests: int, limit: int) -> float:
    """Keep the budget's pace free for ``requests`` made now outside the plan.

    A complete sweep confirms the bookings it did not list with one GET each
    (docs/deletions.md); the next ticks' sends start after them instead of
    competing with them for the budget's slots, which would hold their
    workers waiting. Returns the new cursor.
    """
    pace = scheduler.BUDGET_WINDOW / max(1, limit)
    raw = client.eval(_RESERVE_SENDS, 1, ks.plan_cursor, repr(time.time()), repr(requests * pace))
    return float(text(raw))


def send_cursor(client: redis.Redis, ks: keys.Keyspace) -> float:
    """The earliest send time the last tick left free (0 when it lies in the past)."""
    raw = client.get(ks.plan_cursor)
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


def summary(client: redis.Redis, ks: keys.Keyspace) -> dict[str, Any]:
    raw = client.get(ks.plan_summary)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def mark_started(
    client: redis.Redis,
    ks: keys.Keyspace,
    org_id: str,
    resource: str,
    due: float | None,
    published: float | None = None,
) -> dict[str, str]:
    """The poll holds the lease now: the queued marker has done its job; note the delay
    (from its deadline) and the pickup (from its message's publication).

    Returns the unit's plan as it is now, for :func:`record_success` (read in the same
    round trip; the fields it reads are written by the lease's holder alone)."""
    pipe = client.pipeline(transaction=False)
    pipe.hdel(ks.plan(org_id, resource), "queued_at")
    pipe.incr(ks.plan_started)
    if due is not None:
        now = time.time()
        entry = f"{due:.3f} {now - due:.4f}"
        if published is not None:
            entry += f" {now - published:.4f}"
        pipe.lpush(ks.plan_delays, entry)
        pipe.ltrim(ks.plan_delays, 0, DELAYS_KEPT - 1)
    pipe.hgetall(ks.plan(org_id, resource))
    return text_hash(pipe.execute()[-1])


def started_rate(client: redis.Redis, ks: keys.Keyspace, now: float) -> float | None:
    """The workers' start rate (polls a second, fleet-wide), read from the start counter.

    Every tick reads the counter and keeps its reading, so the rate spans
    ticks of any beat; the pure half is scheduler.started_rate.
    """
    pipe = client.pipeline(transaction=False)
    pipe.get(ks.plan_started)
    pipe.hgetall(ks.plan_workers)
    raw_count, raw_last = pipe.execute()
    count = int(raw_count or 0)
    last = text_hash(raw_last)
    previous = _f(last, "rate")
    last_count, last_at = _f(last, "count"), _f(last, "at")
    rate = previous
    if last_count is not None and last_at is not None:
        # A counter behind its last reading was reset (a flushed Redis): start again.
        rate = scheduler.started_rate(
            previous if count >= last_count else None,
            int(count - last_count) if count >= last_count else 0,
            now - last_at,
        )
    values: dict[Any, Any] = {"count": str(count), "at": repr(now)}
    if rate is not None:
        values["rate"] = repr(rate)
    client.hset(ks.plan_workers, mapping=values)
    return rate


def record_success(  # noqa: PLR0913 - the outcome's parts, keyword-only, each named at the call
    client: redis.Redis,
    ks: keys.Keyspace,
    org_id: str,
    resource: str,
    *,
    mode: str,
    changes: int,
    deleted: int,
    pages: int,
    complete: bool,
    plan: Mapping[str, str] | None = None,
) -> None:
    """Feed one poll's outcome into the unit's estimates (``plan``: as
    :func:`mark_started` read it under the poll's lease; read here without)."""
    now = time.time()
    key = ks.plan(org_id, resource)
    current = text_hash(client.hgetall(key)) if plan is None else dict(plan)
    values: dict[Any, Any] = {"failures": "0", "retry_at": "0"}
    values.update(_estimate_fields("chg", _estimate(current, "chg").observe(changes, now)))
    if mode == "incremental":
        # A running average of pages per incremental poll: the allocation's cost estimate.
        old = _f(current, "poll_pages") or 1.0
        values["poll_pages"] = repr(round(0.7 * old + 0.3 * max(1, pages), 3))
    else:
        sweep_pages = int(_f(current, "sweep_pages_cur") or 0) + pages
        sweep_deleted = int(_f(current, "sweep_deleted_cur") or 0) + deleted
        if complete:
            deletions = _estimate(current, "del").observe(sweep_deleted, now)
            values.update(_estimate_fields("del", deletions))
            values.update(sweep_pages=str(max(1, sweep_pages)), sweep_pages_cur="0")
            values["sweep_deleted_cur"] = "0"
        else:
            values.update(sweep_pages_cur=str(sweep_pages), sweep_deleted_cur=str(sweep_deleted))
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=values)
    pipe.hdel(key, "queued_at")
    pipe.execute()


def forget_planned(client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str) -> None:
    """A poll handed back by a worker that is shutting down: plan it again at once."""
    client.hdel(ks.plan(org_id, resource), "poll_due", "sweep_due", "queued_at")


def record_failure(
    client: redis.Redis,
    ks: keys.Keyspace,
    org_id: str,
    resource: str,
    exc: BaseException,
    retry_after: float | None = None,
    *,
    back_off: bool = True,
) -> float:
    """Record a failed poll: the one place a poll failure is recorded.

    The org's error count and last error (what status shows; a complete scan
    clears ``last_error``) and, with ``back_off``, the unit's backoff:
    exponential, or the API's Retry-After if longer. Returns the delay.
    """
    meta = ks.org_meta(org_id, resource)
    pipe = client.pipeline(transaction=False)
    error = f"{type(exc).__name__}: {exc}"[:500]
    pipe.hset(meta, mapping={"last_error": error, "last_error_at": str(time.time())})
    pipe.hincrby(meta, "errors", 1)
    if not back_off:
        pipe.execute()
        return 0.0
    key = ks.plan(org_id, resource)
    pipe.hincrby(key, "failures", 1)
    failures = int(pipe.execute()[-1])
    delay = backoff.exponential(failures, *FAILURE_BACKOFF)
    if retry_after is not None:
        delay = max(delay, retry_after)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, "retry_at", repr(time.time() + delay))
    pipe.hdel(key, "queued_at")
    pipe.execute()
    return delay


def request_resync(client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str) -> None:
    client.hset(ks.org_meta(org_id, resource), "resync", "1")


def plans(
    client: redis.Redis, ks: keys.Keyspace, org_ids: Sequence[str], resources: Sequence[str]
) -> dict[tuple[str, str], dict[str, str]]:
    pipe = client.pipeline(transaction=False)
    units = [(o, r) for o in org_ids for r in resources]
    for org_id, res in units:
        pipe.hgetall(ks.plan(org_id, res))
    return {unit: text_hash(raw) for unit, raw in zip(units, pipe.execute(), strict=True)}


def delays(client: redis.Redis, ks: keys.Keyspace, since: float = 0.0) -> list[float]:
    """The latest dispatch delays (seconds from a deadline to its poll's start), oldest first."""
    return [delay for delay, _ in timings(client, ks, since)]


def timings(
    client: redis.Redis, ks: keys.Keyspace, since: float = 0.0
) -> list[tuple[float, float | None]]:
    """Per started poll, oldest first: its delay, and the seconds from its message's
    publication to its start (None for a message that carried no publication time)."""
    out = []
    for raw in reversed(client.lrange(ks.plan_delays, 0, -1)):
        due, delay, *pickup = text(raw).split(" ")
        if float(due) >= since:
            out.append((float(delay), float(pickup[0]) if pickup else None))
    return out


def discovery_due(client: redis.Redis, ks: keys.Keyspace, every: float) -> bool:
    """True for one caller per ``every`` seconds, fleet-wide."""
    stamp = json.dumps({"at": time.time()})
    return bool(client.set(ks.discovery, stamp, nx=True, px=max(1, int(every * 1000))))
