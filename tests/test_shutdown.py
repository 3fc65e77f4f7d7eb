"""Bounded shutdown: SIGTERM to a real worker in the middle of a long sweep.

Kubernetes and Docker send SIGTERM to the container's PID 1 only (the celery
main process), so the tests signal that process, never its group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from etbridge import keys, shutdown
from etbridge.replies import text, text_hash
from tests.support.fleet import Fleet, fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox

ORG = "1001"
BOOKINGS = 6000  # 60 pages of 100
PAGE_DELAY = 0.25  # seconds the sandbox takes per page: a sweep of about 15 s


@pytest.fixture
def big_sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=BOOKINGS, seed=16, rate_limit=100_000) as sb:
        yield sb


def meta(r: redis.Redis) -> dict[str, str]:
    return text_hash(r.hgetall(keys.DEFAULT.org_meta(ORG, "bookings")))


def exit_within(proc: subprocess.Popen[bytes], seconds: float) -> float:
    started = time.monotonic()
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker was still running {seconds:.0f}s after SIGTERM") from None
    return time.monotonic() - started


def sweeping_worker(f: Fleet, r: redis.Redis) -> None:
    """Wait until the first worker's baseline sweep has committed some pages."""
    wait_for(
        lambda: r.exists(keys.DEFAULT.lease(ORG)) and meta(r).get("sweep_cursor"),
        90,
        "the baseline sweep under way",
    )


def test_sigterm_during_a_sweep_stops_at_a_page_and_hands_over_at_once(
    big_sandbox: Sandbox, redis_url: str, tmp_path: Path, r: redis.Redis
) -> None:
    env = fleet_env(big_sandbox, redis_url, ETBRIDGE_ORGS=ORG)
    with fleet(env, tmp_path) as f:
        first = f.worker(concurrency=1)
        f.beat()
        big_sandbox.faults(slow=1.0, slow_seconds=PAGE_DELAY)
        sweeping_worker(f, r)
        second = f.worker(concurrency=1)
        wait_for(lambda: "ready" in second.output(), 60, "the second worker ready")
        lease_before = r.get(keys.DEFAULT.lease(ORG))
        pages_before = int(r.hlen(keys.DEFAULT.snapshots(ORG, "bookings")))
        assert 0 < pages_before < BOOKINGS, "the sweep is half-way when the SIGTERM comes"

        sent = time.monotonic()
        os.kill(first.popen.pid, signal.SIGTERM)
        took = exit_within(first.popen, 25)  # ETBRIDGE_SHUTDOWN_GRACE's default
        assert first.popen.returncode == 0, first.output()[-3000:]
        # The poll stopped at a page boundary: well before the sweep could have ended.
        assert took < 10, f"exit took {took:.1f}s"
        log = first.output()
        assert "shutdown requested" in log
        assert "sweep paused org_id=1001" in log

        # The lease was released, not left to expire: the second worker holds it
        # well within one lease lifetime (20 s) of the SIGTERM.
        wait_for(
            lambda: (v := r.get(keys.DEFAULT.lease(ORG))) is not None and v != lease_before,
            15,
            "the second worker's lease",
        )
        handed_over = time.monotonic() - sent
        assert handed_over < 15, f"handed over after {handed_over:.1f}s"

        # The second worker resumes from the saved cursor and completes the baseline.
        big_sandbox.faults(slow=0.0)
        wait_for(lambda: meta(r).get("baselined") == "1", 120, "the baseline complete")
        truth = big_sandbox.truth()["orgs"][ORG]["bookings"]
        stored = {text(k) for k in r.hkeys(keys.DEFAULT.snapshots(ORG, "bookings"))}
        assert stored == set(truth), "every booking stored once the sweep finished"
        resumed = [line for line in second.output().splitlines() if "poll done" in line]
        assert resumed, f.logs()
        pages = int(resumed[0].split("pages=")[1].split()[0])
        print(f"exit {took:.1f}s, handed over {handed_over:.1f}s, resumed pages {pages}")
        assert pages < BOOKINGS // 100, f"resumed from the cursor, not from the start: {pages}"


def test_a_stuck_page_still_exits_within_the_grace(
    big_sandbox: Sandbox, redis_url: str, tmp_path: Path, r: redis.Redis
) -> None:
    grace = 8.0
    env = fleet_env(big_sandbox, redis_url, ETBRIDGE_ORGS=ORG, ETBRIDGE_SHUTDOWN_GRACE=str(grace))
    with fleet(env, tmp_path) as f:
        worker = f.worker(concurrency=1)
        f.beat()
        big_sandbox.faults(slow=1.0, slow_seconds=PAGE_DELAY)
        sweeping_worker(f, r)
        # Now every page takes longer than the grace: the poll cannot reach a boundary.
        big_sandbox.faults(slow=1.0, slow_seconds=60)
        wait_for(
            lambda: big_sandbox.counters()["held_now"].get("60", 0) >= 1,
            30,
            "a page request held by the 60 s delay",
        )
        os.kill(worker.popen.pid, signal.SIGTERM)
        took = exit_within(worker.popen, grace + 5)
        assert took >= shutdown.deadlines(grace)[0] - 0.5, "the page was given its chance"
        assert "cancelling them (cold)" in worker.output()


def test_deadlines() -> None:
    assert shutdown.deadlines(25) == (20.0, 24.0)
    cold, force = shutdown.deadlines(2)
    assert 0 < cold < force <= 2


_CHILD = """
import signal, sys, time
from etbridge import shutdown
shutdown.install_child_handlers()
print("ready", flush=True)
while True:
    time.sleep(0.01)
    if shutdown.requested():
        print("requested", flush=True)
        break
while True:
    time.sleep(0.01)
"""


@pytest.mark.parametrize("first", [shutdown.CHILD_SIGNAL, signal.SIGTERM])
def test_a_pool_child_stops_at_the_first_signal_and_dies_at_the_next_sigterm(
    first: signal.Signals,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(first)
        assert child.stdout.readline() == b"requested\n"
        assert child.poll() is None, "the first signal only asks the poll to stop"
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == -signal.SIGTERM
        assert child.stderr is not None
        assert b"Traceback" not in child.stderr.read()
    finally:
        child.kill()
        child.wait()


_CHILD_BLOCKED = """
import signal, sys, time
from etbridge import shutdown
shutdown.install_child_handlers()
both = {shutdown.CHILD_SIGNAL, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, both)
print("ready", flush=True)
sys.stdin.readline()
signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both handled now, SIGUSR2 first
time.sleep(2)
print("alive", flush=True)
"""


def test_the_main_process_signal_and_a_sigterm_at_once_end_the_child_without_a_traceback() -> None:
    """The race that put "Signal 15 ignored due to race condition" in a worker's log."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_BLOCKED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(shutdown.CHILD_SIGNAL)
        child.send_signal(signal.SIGTERM)
        child.stdin.write(b"go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=10)
        assert b"Traceback" not in err, err.decode()
        assert child.returncode == -signal.SIGTERM, (child.returncode, out)
    finally:
        child.kill()
        child.wait()
