"""The planner's facts in Redis (etbridge/planstore.py): a failed poll is recorded once."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from etbridge import keys, planstore, status
from etbridge.errors import LeaseLost, RetriableError
from etbridge.scheduler import Decision, Reason
from etbridge.state import text_hash
from tests.test_status import make_settings

ORG, RES = "1001", "bookings"


def _meta(r: redis.Redis) -> dict[str, str]:
    return text_hash(r.hgetall(keys.DEFAULT.org_meta(ORG, RES)))


def _plan(r: redis.Redis) -> dict[str, str]:
    return text_hash(r.hgetall(keys.DEFAULT.plan(ORG, RES)))


def test_a_failure_counts_shows_its_error_and_backs_the_unit_off(r: redis.Redis) -> None:
    r.hset(keys.DEFAULT.plan(ORG, RES), "queued_at", "1")
    before = time.time()
    delay = planstore.record_failure(r, keys.DEFAULT, ORG, RES, RetriableError("HTTP 503"))
    assert delay == pytest.approx(planstore.FAILURE_BACKOFF[0], rel=0.5)
    meta, plan = _meta(r), _plan(r)
    assert meta["errors"] == "1" and meta["last_error"] == "RetriableError: HTTP 503"
    assert float(meta["last_error_at"]) >= before
    assert plan["failures"] == "1" and "queued_at" not in plan
    assert float(plan["retry_at"]) == pytest.approx(before + delay, abs=2)
    # The error is kept in one place only: the unit's plan does not copy it.
    assert set(plan) == {"failures", "retry_at"}


def test_failures_back_off_further_and_retry_after_wins_when_longer(r: redis.Redis) -> None:
    first = planstore.record_failure(r, keys.DEFAULT, ORG, RES, RetriableError("a"))
    second = planstore.record_failure(r, keys.DEFAULT, ORG, RES, RetriableError("b"))
    assert second > first
    assert (
        planstore.record_failure(r, keys.DEFAULT, ORG, RES, RetriableError("c"), retry_after=250.0)
        >= 250
    )
    assert _meta(r)["errors"] == "3" and _meta(r)["last_error"] == "RetriableError: c"
    assert _plan(r)["failures"] == "3"


def test_a_lost_lease_counts_as_an_error_without_backing_the_org_off(r: redis.Redis) -> None:
    assert (
        planstore.record_failure(r, keys.DEFAULT, ORG, RES, LeaseLost("taken"), back_off=False)
        == 0.0
    )
    assert _meta(r)["errors"] == "1" and _meta(r)["last_error"].startswith("LeaseLost")
    assert _plan(r) == {}


def test_long_errors_are_clipped_and_a_success_resets_the_backoff(r: redis.Redis) -> None:
    planstore.record_failure(r, keys.DEFAULT, ORG, RES, RuntimeError("x" * 2000))
    assert len(_meta(r)["last_error"]) == 500
    planstore.record_success(
        r, keys.DEFAULT, ORG, RES, mode="incremental", changes=0, deleted=0, pages=1, complete=True
    )
    plan = _plan(r)
    assert plan["failures"] == "0" and plan["retry_at"] == "0"
    # The error count is history: a success does not rewrite it.
    assert _meta(r)["errors"] == "1"


def test_status_shows_the_recorded_failure(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, orgs=[ORG])
    planstore.record_failure(r, keys.DEFAULT, ORG, RES, RetriableError("HTTP 502"))
    unit = status.collect(r, settings)["orgs"][ORG]
    assert unit["errors"] == 1 and unit["last_error"] == "RetriableError: HTTP 502"
    assert unit["next_retry"] is not None


def test_a_unit_listed_outside_the_planner_counts_its_next_deadlines_from_that_listing(
    r: redis.Redis,
) -> None:
    swept = time.time() - 100
    meta: dict[Any, Any] = {
        "baselined": "1",
        "last_sweep_at": repr(swept),
        "last_poll_at": repr(swept + 1),
    }
    r.hset(keys.DEFAULT.org_meta(ORG, RES), mapping=meta)
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], time.time())
    assert unit.last_sweep_due == pytest.approx(swept)
    assert unit.last_poll_due is None and unit.last_listed == pytest.approx(swept + 1)
    # The planner's own deadline wins once it has one.
    r.hset(keys.DEFAULT.plan(ORG, RES), mapping={"sweep_due": "123.5"})
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], time.time())
    assert unit.last_sweep_due == 123.5


def test_the_start_rate_is_read_from_the_counter_that_started_polls_raise(r: redis.Redis) -> None:
    assert planstore.started_rate(r, keys.DEFAULT, 100.0) is None  # a first reading has no rate
    for _ in range(30):
        planstore.mark_started(r, keys.DEFAULT, ORG, RES, None)
    assert planstore.started_rate(r, keys.DEFAULT, 102.0) == pytest.approx(15.0)
    # A flushed counter starts the measure again rather than going negative.
    r.delete(keys.DEFAULT.plan_started)
    assert planstore.started_rate(r, keys.DEFAULT, 103.0) == pytest.approx(0.0)


def test_a_started_poll_records_its_delay_and_its_pickup(r: redis.Redis) -> None:
    now = time.time()
    planstore.mark_started(r, keys.DEFAULT, ORG, RES, now - 2.0, published=now - 0.5)
    planstore.mark_started(
        r, keys.DEFAULT, ORG, RES, now - 1.0
    )  # a message from before publication was kept
    planstore.mark_started(
        r, keys.DEFAULT, ORG, RES, now - 100.0, published=now - 99.0
    )  # before `since`
    delays = planstore.delays(r, keys.DEFAULT, since=now - 10)
    assert [round(d) for d in delays] == [2, 1]
    (first, pickup), (_, none) = planstore.timings(r, keys.DEFAULT, since=now - 10)
    assert round(first) == 2 and none is None
    assert pickup is not None and 0.5 <= pickup < 1.5


def test_a_unit_without_a_baseline_is_noted_when_first_seen_and_kept(r: redis.Redis) -> None:
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], 100.0)
    assert not unit.baselined and unit.first_seen is None
    planstore.note_seen(r, keys.DEFAULT, [unit], 100.0)
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], 105.0)
    assert unit.first_seen == 100.0
    planstore.note_seen(r, keys.DEFAULT, [replace(unit, first_seen=None)], 105.0)  # a racing tick
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], 106.0)
    assert unit.first_seen == 100.0


def test_a_dispatch_stores_its_anchor(r: redis.Redis) -> None:
    now = time.time()
    early = Decision(ORG, RES, "incremental", Reason.POLL, now + 2.0, now + 1.0, 1.5)
    planstore.mark_queued(r, keys.DEFAULT, [early], now)
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], now)
    assert unit.last_poll_due == pytest.approx(now + 2.0)  # sent early: its deadline
    late = Decision(ORG, RES, "sweep", Reason.SWEEP, now, now + 3.0, 0.0)
    planstore.mark_queued(r, keys.DEFAULT, [late], now)
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], now)
    assert unit.last_sweep_due == pytest.approx(now + 3.0)  # sent late: its send
    # A poll handed back by a stopping worker is planned afresh.
    planstore.forget_planned(r, keys.DEFAULT, ORG, RES)
    (unit,) = planstore.gather(r, keys.DEFAULT, [ORG], [RES], now)
    assert unit.last_poll_due is None


def test_the_plan_read_as_a_poll_starts_serves_its_success(r: redis.Redis) -> None:
    """mark_started reads the unit's plan; record_success from it writes what it would
    write from its own read (the fields it reads are written by the lease's holder)."""
    planstore.record_failure(r, keys.DEFAULT, ORG, RES, RetriableError("a"))
    planstore.record_success(
        r, keys.DEFAULT, ORG, RES, mode="incremental", changes=3, deleted=0, pages=2, complete=True
    )
    r.hset(keys.DEFAULT.plan(ORG, RES), "queued_at", "1.0")
    plan = planstore.mark_started(r, keys.DEFAULT, ORG, RES, None)
    assert plan == _plan(r) and "queued_at" not in plan and plan["poll_pages"] == "1.3"
    outcome = {"mode": "incremental", "changes": 1, "deleted": 0, "pages": 1, "complete": True}
    with_plan: list[dict[str, float]] = []
    without: list[dict[str, float]] = []
    for read, out in ((plan, with_plan), (None, without)):
        r.delete(keys.DEFAULT.plan(ORG, RES))
        fields: dict[Any, Any] = dict(plan)
        r.hset(keys.DEFAULT.plan(ORG, RES), mapping=fields)
        planstore.record_success(r, keys.DEFAULT, ORG, RES, plan=read, **outcome)  # type: ignore[arg-type]
        out.append({k: float(v) for k, v in _plan(r).items() if not k.endswith("_at")})
    # (The rate estimates decay with the clock: the two runs are microseconds apart.)
    assert with_plan[0] == pytest.approx(without[0], abs=0.05)
    assert with_plan[0]["poll_pages"] == 1.21 and set(with_plan[0]) == set(without[0])
