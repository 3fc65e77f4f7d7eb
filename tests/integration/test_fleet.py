"""Real ``celery worker`` and ``celery beat`` processes against the sandbox and Redis."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.fleet import Fleet, fleet, fleet_env, read_sink, wait_for
from tests.support.grader import grade
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=3, bookings=30, seed=11, rate_limit=600) as sb:
        yield sb


def _graded(client: redis.Redis, sandbox: Sandbox) -> list[str]:
    return grade(read_sink(client), sandbox.truth())


def test_fleet_stream_matches_the_truth(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    env = fleet_env(sandbox, redis_url, ETBRIDGE_EMIT_BASELINE="true", ETBRIDGE_RATE_LIMIT="600")
    with fleet(env, tmp_path) as f:
        f.worker(concurrency=2)
        f.beat()
        wait_for(lambda: len(read_sink(client)) >= 90, 90, "the baseline snapshots")
        sandbox.churn(4)
        wait_for(lambda: len(sandbox.log()) >= 60, 60, "sixty mutations")
        sandbox.churn(0)
        problems: list[str] = []

        def settled() -> bool:
            problems[:] = _graded(client, sandbox)
            return not problems

        try:
            wait_for(settled, 120, "the sink to match the truth", interval=1.0)
        except AssertionError:
            raise AssertionError(f"{problems[:5]}\n{f.logs()}") from None
    counters = sandbox.counters()
    assert counters["served_429"] == 0
    assert counters["expired_token_requests"] == 0
    assert counters["token_requests"] == 1


def _run_rounds(
    f: Fleet, client: redis.Redis, sandbox: Sandbox, rounds: int
) -> list[dict[str, Any]]:
    """Mutate in rounds; after each, wait until the sink holds every change of the round."""
    wait_for(lambda: not _graded(client, sandbox), 120, "the baseline")
    for n in range(rounds):
        sandbox.mutate(8, kinds=["create", "update", "touch"])
        if n == rounds - 1:
            sandbox.mutate(2, kinds=["delete"])
        wait_for(lambda: not _graded(client, sandbox), 120, f"round {n}", interval=0.5)
    return read_sink(client)


def _content(events: list[dict[str, Any]]) -> Counter[str]:
    """What an event says, without the parts that depend on when it ran."""
    out: Counter[str] = Counter()
    for e in events:
        data = e["data"]
        after = data.get("after") or {}
        # Timestamps come from the sandbox's wall clock, which differs between runs.
        attrs = {k: v for k, v in (after.get("attributes") or {}).items() if not k.endswith("_at")}
        out[json.dumps([e["type"], e["subject"], data.get("changes"), attrs], sort_keys=True)] += 1
    return out


def test_more_workers_add_nothing_twice(redis_url: str, tmp_path: Path) -> None:
    results: dict[int, Counter[str]] = {}
    for workers in (1, 2, 4):
        client = redis.Redis.from_url(redis_url)
        client.flushall()
        with Sandbox.start(orgs=3, bookings=20, seed=5, rate_limit=6000) as sb:
            env = fleet_env(
                sb,
                redis_url,
                ETBRIDGE_EMIT_BASELINE="true",
                ETBRIDGE_RATE_LIMIT="6000",
                ETBRIDGE_POLL_INTERVAL="1",
            )
            with fleet(env, tmp_path / f"w{workers}") as f:
                (tmp_path / f"w{workers}").mkdir(exist_ok=True)
                for _ in range(workers):
                    f.worker(concurrency=1)
                f.beat()
                events = _run_rounds(f, client, sb, rounds=3)
            assert max(Counter(e["id"] for e in events).values()) == 1
            results[workers] = _content(events)
    assert results[1] == results[2] == results[4]


def test_two_beats_do_not_double_polling(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(sandbox, redis_url, ETBRIDGE_POLL_INTERVAL="3", ETBRIDGE_SWEEP_INTERVAL="3600")
    with fleet(env, tmp_path) as f:
        f.worker(concurrency=2)
        first = f.beat()
        f.beat()
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: len(client.keys("etb:*:meta:bookings")) == 3, 60, "baselines")
        time.sleep(1)  # let the baseline sweeps finish before counting
        start = sandbox.counters()["list_requests_by_org"]
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 >= 24, 30, "24 s of polling", interval=1)
        end = sandbox.counters()["list_requests_by_org"]
        elapsed = time.monotonic() - t0
        for org in ("1001", "1002", "1003"):
            polls = end.get(org, 0) - start.get(org, 0)
            # One poll per 3 s at most (plus one at the edges), never twice that.
            assert polls <= elapsed / 3 + 2, (org, polls, elapsed)
            assert polls >= elapsed / 3 / 2, (org, polls, elapsed)
        # Beat killed: the other one goes on planning.
        first.kill()
        mid = sandbox.counters()["list_requests_by_org"]
        t1 = time.monotonic()
        wait_for(
            lambda: all(
                sandbox.counters()["list_requests_by_org"].get(o, 0) - mid.get(o, 0) >= 2
                for o in ("1001", "1002", "1003")
            ),
            30,
            "polling to go on after a beat died",
        )
        assert time.monotonic() - t1 < 30
