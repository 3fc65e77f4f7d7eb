"""The shared token across real processes: cold starts, expiry, revocation, crashes.

Every worker is a real ``multiprocessing`` process (fork) with its own Redis
client and TokenCache, talking to the real sandbox over HTTP.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from typing import Any

import pytest
import redis
import requests

from etbridge.auth import BearerAuth, TokenCache, TokenResponse
from etbridge.backoff import max_attempts_in as max_requests_in
from etbridge.errors import AuthenticationError
from etbridge.settings import Settings
from tests.support.sandbox import Sandbox

ctx = mp.get_context("fork")


def wait_for(condition: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def settings_for(sb: Sandbox, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "client_id": sb.client_id,
        "client_secret": sb.client_secret,
        "api_url": sb.url,
        "token_url": sb.token_url,
        "redis_url": redis_url,
    }
    values.update(overrides)
    return Settings(**values)


def join_all(procs: list[Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            raise AssertionError(f"worker {p.pid} did not finish")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=1, rate_limit=1_000_000) as sb:
        yield sb


@pytest.fixture
def sb(sandbox: Sandbox) -> Sandbox:
    sandbox.reset()
    return sandbox


# --- workers (module level: run in child processes) --------------------------------------


def cold_worker(settings: Settings, threads: int, go: Any, out: Any) -> None:
    cache = TokenCache(redis.Redis.from_url(settings.redis_url), settings)
    tokens: list[str] = []
    go.wait(30)  # a barrier shared with the other processes and the test
    workers = [threading.Thread(target=lambda: tokens.append(cache.get())) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    out.put(tokens)


def api_worker(
    settings: Settings,
    index: int,
    calls: Any,
    stop: Event,
    out: Any,
    pause: float,
    threads: int = 1,
) -> None:
    """Call GET /v2/organizations until told to stop; report failures and retries."""
    cache = TokenCache(redis.Redis.from_url(settings.redis_url), settings)
    errors: list[str] = []
    counts = {"retried": 0, "max_history": 0}
    lock = threading.Lock()

    def loop() -> None:
        session = requests.Session()
        session.auth = BearerAuth(cache)
        while not stop.is_set():
            try:
                resp = session.get(f"{settings.api_url}/v2/organizations", timeout=30)
                ok = resp.status_code == 200
                with lock:
                    if not ok:
                        errors.append(f"status {resp.status_code}")
                    if resp.history:
                        counts["retried"] += 1
                    counts["max_history"] = max(counts["max_history"], len(resp.history))
                    calls[index] += 1
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
            time.sleep(pause)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put({"errors": errors, **counts})


def failing_worker(settings: Settings, until: float, out: Any) -> None:
    """Ask for a token (wrong secret) again and again until ``until`` (monotonic)."""
    cache = TokenCache(
        redis.Redis.from_url(settings.redis_url), settings, auth_backoff=1.0, auth_backoff_cap=900
    )
    codes: list[str | None] = []
    fresh = 0
    while time.monotonic() < until:
        try:
            cache.get()
            codes.append("success?!")
        except AuthenticationError as exc:
            codes.append(exc.code)
            fresh += "remembered" not in str(exc)
        time.sleep(0.02)
    out.put((codes, fresh))


class HangingHolder(TokenCache):
    """Takes the fetch lock, then hangs before its request (to be SIGKILLed)."""

    def _request_token(self) -> TokenResponse:
        self._redis.set("test:holder-ready", "1")
        time.sleep(3600)
        raise AssertionError("unreachable")


def hanging_worker(settings: Settings, lock_ttl: float) -> None:
    cache = HangingHolder(redis.Redis.from_url(settings.redis_url), settings, lock_ttl=lock_ttl)
    cache.get()


def waiting_worker(settings: Settings, lock_ttl: float, out: Any) -> None:
    cache = TokenCache(
        redis.Redis.from_url(settings.redis_url), settings, lock_ttl=lock_ttl, wait_timeout=30
    )
    token = cache.get()
    out.put((time.monotonic(), len(token)))


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_and_threads_starting_cold_make_one_token_request(
    sb: Sandbox, redis_url: str
) -> None:
    settings = settings_for(sb, redis_url)
    go, out = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=cold_worker, args=(settings, 8, go, out)) for _ in range(4)]
    for p in procs:
        p.start()
    go.wait(30)
    tokens = [t for _ in procs for t in out.get(timeout=60)]
    join_all(procs)
    assert len(tokens) == 32 and len(set(tokens)) == 1
    assert sb.counters()["token_requests"] == 1


@pytest.mark.slow
def test_short_lived_tokens_are_refreshed_once_per_lifetime_before_expiry(
    sb: Sandbox, redis_url: str
) -> None:
    sb.config(token_ttl=5)  # until the next reset
    settings = settings_for(sb, redis_url)
    calls, stop, out = ctx.Array("i", 3), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=api_worker, args=(settings, i, calls, stop, out, 0.02, 2))
        for i in range(3)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    lifetime = 5.0
    # Run for 3.5 lifetimes, counted from the first call.
    wait_for(lambda: sum(calls[:]) > 0)
    first_call = time.monotonic()
    wait_for(lambda: time.monotonic() - first_call > 3.5 * lifetime, timeout=60)
    stop.set()
    reports = [out.get(timeout=60) for _ in procs]
    join_all(procs)
    duration = time.monotonic() - started
    counters = sb.counters()
    assert all(not rep["errors"] for rep in reports), reports
    assert counters["expired_token_requests"] == 0, counters
    assert counters["api_requests"] > 100
    expected = math.ceil(duration / lifetime)
    assert expected - 1 <= counters["token_requests"] <= expected + 1, (counters, duration)


@pytest.mark.slow
def test_revoking_tokens_under_load_costs_one_token_request(sb: Sandbox, redis_url: str) -> None:
    settings = settings_for(sb, redis_url)
    n = 8
    calls, stop, out = ctx.Array("i", n), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=api_worker, args=(settings, i, calls, stop, out, 0.01)) for i in range(n)
    ]
    for p in procs:
        p.start()
    try:
        wait_for(lambda: min(calls[:]) >= 3)
        assert sb.counters()["token_requests"] == 1
        sb.revoke_tokens()
        at_revoke = calls[:]
        wait_for(lambda: all(c >= a + 5 for c, a in zip(calls[:], at_revoke, strict=True)))
    finally:
        stop.set()
    reports = [out.get(timeout=60) for _ in procs]
    join_all(procs)
    counters = sb.counters()
    assert all(not rep["errors"] for rep in reports), reports
    assert counters["token_requests"] == 2, counters
    assert max(rep["max_history"] for rep in reports) == 1
    assert sum(rep["retried"] for rep in reports) >= 1
    assert counters["unauthorized"] == sum(rep["retried"] for rep in reports)


@pytest.mark.slow
def test_wrong_secret_asks_the_token_endpoint_only_on_the_backoff_schedule(
    sb: Sandbox, redis_url: str
) -> None:
    settings = settings_for(sb, redis_url, client_secret="definitely-wrong-secret")
    out = ctx.Queue()
    started = time.monotonic()
    until = started + 7.0
    procs = [ctx.Process(target=failing_worker, args=(settings, until, out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    join_all(procs)
    span = time.monotonic() - started
    codes = [code for codes, _ in results for code in codes]
    fresh = sum(f for _, f in results)
    requests_made = sb.counters()["token_requests"]
    assert set(codes) == {"invalid_client"}
    assert len(codes) > 50  # the workers really kept asking
    # Requests at 0, 1, 3, 7 s …: never more than the schedule allows in the span.
    assert 2 <= requests_made <= max_requests_in(span, 1.0, 900)
    assert fresh == requests_made  # each request gave exactly one caller the fresh error


@pytest.mark.slow
def test_a_sigkilled_lock_holder_is_taken_over_within_the_lock_expiry(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    settings = settings_for(sb, redis_url)
    lock_ttl = 2.0
    holder = ctx.Process(target=hanging_worker, args=(settings, lock_ttl))
    holder.start()
    wait_for(lambda: r.get("test:holder-ready") == b"1")
    out = ctx.Queue()
    waiter = ctx.Process(target=waiting_worker, args=(settings, lock_ttl, out))
    waiter.start()
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    holder.join(10)
    done_at, token_length = out.get(timeout=30)
    join_all([waiter])
    assert token_length > 0
    # The waiter got the token once the dead holder's lock expired (≤ lock_ttl),
    # with generous slack for a loaded machine.
    assert done_at - killed_at < lock_ttl + 5
    assert sb.counters()["token_requests"] == 1
