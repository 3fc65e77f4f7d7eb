"""Fleets of real processes sharing one budget against the real sandbox."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from etbridge.client import EventTempleClient
from etbridge.errors import RateLimited, RetriableError
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings
from tests.support.sandbox import Sandbox
from tests.support.stack import FixedToken

CTX = multiprocessing.get_context("spawn")


def _hammer(  # noqa: PLR0913  (a Process target: its args are positional)
    api_url: str,
    client_id: str,
    token: str,
    redis_url: str,
    limit: int,
    budget_wait: float,
    ready: Any,
    go: Any,
    stop: Any,
    results: Any,
) -> None:
    """Fetch one-record pages as fast as the shared budget allows, until ``stop``."""
    settings = Settings(
        client_id=client_id, client_secret="unused", api_url=api_url, rate_limit=limit
    )
    r = redis.Redis.from_url(redis_url)
    budget = RequestBudget.for_settings(settings, r)
    client = EventTempleClient(
        settings, auth=FixedToken(token), budget=budget, budget_wait=budget_wait, backoff_cap=1.0
    )
    ok = limited = failed = 0
    ready.set()
    go.wait(60)
    while not stop.is_set():
        try:
            client.get_document("1001", "/v2/bookings", {"page[size]": "1"})
            ok += 1
        except RateLimited as exc:
            # What a Celery task does: retry later (here: wait, bounded by stop).
            limited += 1
            stop.wait(min(exc.retry_after or 1.0, 2.0))
        except RetriableError:
            failed += 1
    client.close()
    r.close()
    results.put({"ok": ok, "limited": limited, "failed": failed})


class Fleet:
    def __init__(self, sb: Sandbox, redis_url: str, n: int, limit: int, budget_wait: float):
        self.ready = [CTX.Event() for _ in range(n)]
        self.go = CTX.Event()
        self.stop = CTX.Event()
        self.results: Any = CTX.Queue()
        token = sb.token()
        self.procs = [
            CTX.Process(
                target=_hammer,
                args=(
                    sb.url,
                    sb.client_id,
                    token,
                    redis_url,
                    limit,
                    budget_wait,
                    ready,
                    self.go,
                    self.stop,
                    self.results,
                ),
                daemon=True,
            )
            for ready in self.ready
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        for ready in self.ready:
            assert ready.wait(120), "a fleet process did not start"
        self.go.set()

    def finish(self) -> list[dict[str, int]]:
        self.stop.set()
        results = [self.results.get(timeout=60) for _ in self.procs]
        for proc in self.procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
        return results

    def kill(self) -> None:
        self.stop.set()
        for proc in self.procs:
            if proc.is_alive():
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@pytest.fixture
def fleet_factory(redis_url: str) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(sb: Sandbox, n: int, limit: int, budget_wait: float) -> Fleet:
        fleet = Fleet(sb, redis_url, n, limit, budget_wait)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.kill()


@pytest.mark.slow
def test_eight_processes_never_exceed_the_api_limit(fleet_factory: Any) -> None:
    with Sandbox.start(orgs=1, bookings=20, rate_limit=60) as sb:
        fleet = fleet_factory(sb, 8, 60, 2.0)
        fleet.start()
        deadline = time.monotonic() + 70
        # Watch the whole run; fail fast if the API ever says no.
        while time.monotonic() < deadline:
            assert sb.counters()["served_429"] == 0
            time.sleep(1.0)
        results = fleet.finish()
        counters = sb.counters()
    assert counters["served_429"] == 0
    per_window = counters["requests_per_window"]
    assert max(per_window.values()) <= 60, per_window
    ok = sum(r["ok"] for r in results)
    # Paced at 61 s / 60, 70 s hold about 69 grants: the fleet used its budget.
    assert ok >= 55, (results, per_window)
    assert sum(r["failed"] for r in results) == 0


@pytest.mark.slow
def test_a_429_seen_by_one_process_stops_the_whole_fleet(fleet_factory: Any) -> None:
    with Sandbox.start(orgs=1, bookings=20, rate_limit=100_000) as sb:
        fleet = fleet_factory(sb, 4, 100_000, 15.0)
        fleet.start()
        deadline = time.monotonic() + 60
        while sb.counters()["api_requests"] < 50:
            assert time.monotonic() < deadline, "the fleet did not get going"
            time.sleep(0.05)
        forced_at = time.monotonic()
        sb.force_429(1, 5)
        # Sample the sandbox's request counter: (sent at, answered at, requests, forced 429s).
        samples: list[tuple[float, float, int, int]] = []
        deadline = time.monotonic() + 60
        resumed_at: float | None = None
        while resumed_at is None:
            assert time.monotonic() < deadline, "requests never resumed after the pause"
            sent = time.monotonic()
            counters = sb.counters()
            samples.append(
                (sent, time.monotonic(), counters["api_requests"], counters["forced_429"])
            )
            hit = [s for s in samples if s[3] >= 1]
            if hit and samples[-1][2] > hit[0][2] + 5 and sent > hit[0][1] + 2:
                resumed_at = sent
            time.sleep(0.05)
        results = fleet.finish()
        assert sb.counters()["served_429"] == 0
    # The 429 was served between these two instants.
    served_after = forced_at
    served_before = next(s[1] for s in samples if s[3] >= 1)
    # Allow 1 s for the pause to be set and requests already in flight to land,
    # then no request may reach the sandbox until 4.5 s after the 429.
    quiet = [s for s in samples if s[0] >= served_before + 1.0 and s[1] <= served_after + 4.5]
    assert len(quiet) >= 2, "the machine was too slow to observe the pause"
    assert quiet[0][2] == quiet[-1][2], quiet
    # And the fleet went back to work once the pause was over (5 s + the margin).
    assert resumed_at >= served_after + 4.5
    assert all(r["failed"] == 0 for r in results)
