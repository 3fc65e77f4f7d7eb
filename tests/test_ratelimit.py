"""The fleet budget against a real Redis: grants, waits, pauses, low-water charges."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest
import redis

from etbridge import keys, redisconn
from etbridge.errors import RateLimited
from etbridge.ratelimit import RequestBudget, low_water_mark
from etbridge.replies import text
from etbridge.settings import Settings

APP = keys.digest("test-client")


def _budget(r: redis.Redis, limit: int = 5, **kwargs: Any) -> RequestBudget:
    """A budget without pacing (burst = limit) unless the test asks for it."""
    kwargs.setdefault("burst", limit)
    return RequestBudget(r, keys.DEFAULT, APP, limit, **kwargs)


def test_grants_up_to_the_limit_then_says_how_long_to_wait(r: redis.Redis) -> None:
    budget = _budget(r, limit=5)
    assert [budget.try_acquire() for _ in range(5)] == [0.0] * 5
    wait = budget.try_acquire()
    # The first grant leaves the window after 60 s + the 1 s margin.
    assert 55.0 < wait <= 61.0
    # A refusal takes nothing.
    assert r.zcard(keys.DEFAULT.budget(APP)) == 5
    assert 0 < r.pttl(keys.DEFAULT.budget(APP)) <= 62_000


def test_slot_frees_when_the_oldest_grant_leaves_the_sliding_window(r: redis.Redis) -> None:
    budget = _budget(r, limit=3, window=1.0, margin=0.0)
    for _ in range(3):
        budget.acquire(max_wait=0)
    started = time.monotonic()
    budget.acquire(max_wait=10.0)
    assert time.monotonic() - started > 0.5
    # The log never holds more than the limit: the expired grant was trimmed.
    assert 1 <= r.zcard(keys.DEFAULT.budget(APP)) <= 3


def test_acquire_hands_long_waits_back_as_rate_limited(r: redis.Redis) -> None:
    budget = _budget(r, limit=1)
    budget.acquire(max_wait=0)
    with pytest.raises(RateLimited) as info:
        budget.acquire(max_wait=0.2)
    assert info.value.retry_after is not None and info.value.retry_after > 50
    assert APP in str(info.value)


def test_pause_stops_every_grant_and_only_ever_extends(r: redis.Redis) -> None:
    budget = _budget(r, limit=100, margin=0.5)
    assert budget.pause(5) == pytest.approx(5.5, abs=0.05)
    wait = budget.try_acquire()
    assert 4.0 < wait <= 5.5
    # A shorter pause reported later does not cut the longer one short.
    assert budget.pause(1) > 4.0
    assert r.pttl(keys.DEFAULT.budget_pause(APP)) > 4000
    assert budget.pause(8) == pytest.approx(8.5, abs=0.05)
    status = budget.status()
    assert status["paused_until"] is not None and status["paused_until"].endswith("Z")
    assert status["used"] == 0
    # Nonsense pauses are ignored.
    assert budget.pause(0) == 0.0
    assert budget.pause(float("nan")) == 0.0


def test_pause_ends_and_grants_resume(r: redis.Redis) -> None:
    budget = _budget(r, limit=10, margin=0.0)
    budget.pause(0.3)
    started = time.monotonic()
    budget.acquire(max_wait=5.0)
    assert time.monotonic() - started >= 0.2


def test_observe_is_silent_above_the_low_water_mark(r: redis.Redis) -> None:
    budget = _budget(r, limit=100)
    assert budget.low_water == 5
    assert budget.observe(6, 100) == 0
    assert budget.observe(None, None) == 0
    assert r.keys("*") == []


def test_observe_charges_requests_the_api_counted_but_we_did_not(r: redis.Redis) -> None:
    budget = _budget(r, limit=20)
    for _ in range(5):
        budget.acquire(max_wait=0)
    # The API says 1 of 20 remain although we granted only 5: someone else spends.
    assert budget.observe(1, 20) == 14
    assert budget.try_acquire() == 0.0
    assert budget.try_acquire() > 0.0


def test_observe_adds_nothing_when_our_log_already_covers_the_api_count(r: redis.Redis) -> None:
    budget = _budget(r, limit=20)
    for _ in range(20):
        budget.acquire(max_wait=0)
    # Full use under our own budget: remaining 0 is normal, nothing to charge.
    assert budget.observe(0, 20) == 0
    assert r.zcard(keys.DEFAULT.budget(APP)) == 20


def test_observe_respects_a_lower_limit_of_the_api(r: redis.Redis) -> None:
    budget = _budget(r, limit=100)
    for _ in range(57):
        budget.acquire(max_wait=0)
    # The API allows 60 and has 3 left: our free slots shrink to 3.
    assert budget.observe(3, 60) == 40
    granted = sum(budget.try_acquire() == 0.0 for _ in range(10))
    assert granted == 3


def test_record_counts_requests_sent_without_a_slot_even_past_the_limit(r: redis.Redis) -> None:
    budget = _budget(r, limit=2)
    budget.acquire(max_wait=0)
    budget.acquire(max_wait=0)
    budget.record(2)
    assert r.zcard(keys.DEFAULT.budget(APP)) == 4
    assert budget.status()["used"] == 4


def test_status_only_reads(r: redis.Redis) -> None:
    budget = _budget(r, limit=7)
    assert budget.status() == {
        "limit": 7,
        "used": 0,
        "paused_until": None,
        "paused_for": 0.0,
        "freeing": 0,
    }
    assert r.keys("*") == []


def test_budget_of_settings_keys_on_a_digest_of_the_client_id(r: redis.Redis) -> None:
    settings = Settings(client_id="very-identifying-client", client_secret="s3cret", rate_limit=42)
    budget = RequestBudget.for_settings(settings, r)
    assert budget.limit == 42
    budget.acquire(max_wait=0)
    budget.pause(1)
    names = [text(k) for k in r.keys("*")]
    assert sorted(names) == sorted(
        [
            keys.DEFAULT.budget(budget.app_id),
            keys.DEFAULT.budget_pause(budget.app_id),
            keys.DEFAULT.budget_pace(budget.app_id),
        ]
    )
    assert all("very-identifying-client" not in n for n in names)
    assert "very-identifying-client" not in repr(budget)


def test_grants_are_paced_with_a_small_burst(r: redis.Redis) -> None:
    # 10 per 1 s window: emission interval 0.1 s, 2 back to back.
    budget = RequestBudget(r, keys.DEFAULT, APP, 10, window=1.0, margin=0.0, burst=2)
    assert budget.try_acquire() == 0.0
    assert budget.try_acquire() == 0.0
    wait = budget.try_acquire()
    assert 0.05 < wait <= 0.1
    started = time.monotonic()
    for _ in range(4):
        budget.acquire(max_wait=5.0)
    # Four more grants need at least three more intervals (a slow machine only adds).
    assert time.monotonic() - started >= 0.3
    assert r.zcard(keys.DEFAULT.budget(APP)) <= 10


def test_default_pace_and_burst(r: redis.Redis) -> None:
    budget = RequestBudget(r, keys.DEFAULT, APP, 100)
    assert budget.burst == 2
    assert [budget.try_acquire() == 0.0 for _ in range(3)] == [True, True, False]
    # The third waits about one emission interval: 61 s / 100.
    assert 0.4 < budget.try_acquire() <= 0.61
    assert RequestBudget(r, keys.DEFAULT, APP, 600).burst == 12
    assert RequestBudget(r, keys.DEFAULT, APP, 1).burst == 1
    with pytest.raises(ValueError, match="burst must be within"):
        RequestBudget(r, keys.DEFAULT, APP, 10, burst=11)
    budget.reset()
    assert r.keys("*") == []


def test_low_water_mark() -> None:
    assert low_water_mark(10) == 2
    assert low_water_mark(60) == 3
    assert low_water_mark(100) == 5
    assert low_water_mark(1000) == 50


def _grab(url: str, attempts: int, barrier: Any, results: Any) -> None:
    client = redisconn.connect(url)
    budget = RequestBudget(client, keys.DEFAULT, APP, 25, burst=25)
    barrier.wait(timeout=60)
    results.put(sum(budget.try_acquire() == 0.0 for _ in range(attempts)))
    client.close()


def test_processes_racing_for_slots_never_overdraw(redis_url: str, r: redis.Redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [ctx.Process(target=_grab, args=(redis_url, 40, barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    granted = [results.get(timeout=90) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert sum(granted) == 25
    assert r.zcard(keys.DEFAULT.budget(APP)) == 25
