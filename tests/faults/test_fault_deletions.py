"""Listings that lie and an org header that is refused, with real deletions all along.

Each knob of ``/_admin/glitches`` hits one org of a real fleet under churn,
with real deletions before, during and after the glitch. Graded against the
sandbox's truth: no ``deleted`` event for a booking that still exists, no
``created`` event for a booking that never left, every real deletion announced
exactly once, and the usual grade (tests/support/grader.py) once it settled.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from etbridge import holds, keys
from etbridge.redisserver import RedisServer
from tests.support.faults import FaultRun, fault_run
from tests.support.fleet import wait_for

pytestmark = pytest.mark.slow

ORG = "1002"


def _deletions(run: FaultRun, n: int) -> list[str]:
    return [m["id"] for m in run.sandbox.mutate(n, org=ORG, kinds=["delete"])]


def _meta(run: FaultRun) -> dict[bytes, bytes]:
    with contextlib.closing(run.client()) as client:
        meta = cast(dict[bytes, bytes], client.hgetall(keys.DEFAULT.org_meta(ORG, "bookings")))
        return meta


def _hold(run: FaultRun) -> holds.Hold | None:
    with contextlib.closing(run.client()) as client:
        return holds.read(client, keys.DEFAULT, ORG, "bookings")


def _sweeps(run: FaultRun) -> float:
    return float(_meta(run).get(b"last_sweep_at", b"0"))


def _logs(run: FaultRun) -> str:
    return "".join(proc.output() for proc in run.fleet.procs)


def _verdict(run: FaultRun, deleted: list[str]) -> list[str]:
    """What the contract's deletion safety forbids, against the truth and the churn log."""
    events = run.sink_events()["stream"]
    truth = run.sandbox.truth()
    created_by_churn = {(e["org"], e["id"]) for e in run.sandbox.log() if e["kind"] == "create"}
    problems: list[str] = []
    kinds: Counter[tuple[str, str, str]] = Counter(
        (e["orgid"], e["subject"], e["type"].rsplit(".", 1)[-1]) for e in events
    )
    for org_id, org in truth["orgs"].items():
        for rid in org["bookings"]:
            if kinds[(org_id, rid, "deleted")]:
                problems.append(f"org {org_id} booking {rid}: deleted, but it exists")
            if kinds[(org_id, rid, "created")] and (org_id, rid) not in created_by_churn:
                problems.append(f"org {org_id} booking {rid}: created, but it never left")
        for rid in org["deleted"]:
            seen = any(kinds[(org_id, rid, t)] for t in ("snapshot", "created", "updated"))
            if seen and kinds[(org_id, rid, "deleted")] != 1:
                n = kinds[(org_id, rid, "deleted")]
                problems.append(f"org {org_id} booking {rid}: deletion announced {n} times")
    # A booking created and deleted while the org could not be read was never seen: no event.
    known = [rid for rid in deleted if any(kinds[(ORG, rid, t)] for t in ("snapshot", "created"))]
    missing = [rid for rid in known if not kinds[(ORG, rid, "deleted")]]
    if missing:
        problems.append(f"real deletions of org {ORG} not announced: {missing}")
    if len(known) < len(deleted) // 2:
        problems.append(f"too few of the deletions were of bookings seen before: {known}")
    return problems


def _refused(run: FaultRun) -> float:
    return float(run.sandbox.counters()["faults_served"].get("forbidden", 0))


def _scenario(
    run: FaultRun, knob: dict[str, Any], during: Any, progress: Any = _sweeps
) -> dict[str, Any]:
    run.wait_baseline()
    run.sandbox.churn(2)
    deleted = _deletions(run, 2)  # before
    wait_for(lambda: not _verdict(run, deleted), 60, "the deletions before the glitch")
    run.sandbox.glitch(ORG, **knob)
    started = time.monotonic()
    deleted += _deletions(run, 2)  # during
    observed = wait_for(lambda: during(run), 60, f"the fleet to notice {knob}", interval=0.5)
    # Long enough for more polls (sweeps, or refused tries) to meet the glitch.
    mark = progress(run)
    wait_for(lambda: progress(run) > mark, 60, "more polls during the glitch", interval=0.5)
    deleted += _deletions(run, 1)
    run.sandbox.glitch(ORG, **{k: type(v)() for k, v in knob.items()})
    glitch_seconds = time.monotonic() - started
    deleted += _deletions(run, 2)  # after
    took = run.settle(90)
    last: list[str] = []

    def right() -> bool:
        last[:] = _verdict(run, deleted)
        return not last

    try:
        wait_for(right, 60, "every real deletion announced", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[:5]}") from None
    assert _hold(run) is None
    assert b"inaccessible_since" not in _meta(run)
    counters = run.check_api()
    run.check_logs()
    return {
        "observed": observed,
        "glitch_seconds": glitch_seconds,
        "settled": took,
        "deleted": deleted,
        "gets": counters["get_requests_by_org"],
    }


def test_an_empty_listing_is_held_and_released(fault_redis: RedisServer, tmp_path: Path) -> None:
    with fault_run(tmp_path, fault_redis, orgs=3, bookings=30, seed=61) as run:
        out = _scenario(run, {"empty_listings": True}, lambda r: (h := _hold(r)) is not None and h)
        hold = out["observed"]
        assert hold.reason == "empty_listing" and hold.count >= 25
        logs = _logs(run)
        assert logs.count(f"deletions held org_id={ORG}") == 1, "one alert per hold"
        print(f"held {hold.count}; {out}")


def test_a_thinned_listing_is_corrected_by_confirmations(
    fault_redis: RedisServer, tmp_path: Path
) -> None:
    with fault_run(tmp_path, fault_redis, orgs=3, bookings=30, seed=62) as run:
        # About a fifth of the bookings left out: under the guard, so each one is confirmed.
        out = _scenario(
            run,
            {"drop_fraction": 0.2},
            lambda r: r.sandbox.counters()["get_requests_by_org"].get(ORG, 0) >= 3,
        )
        assert _hold(run) is None
        print(out)


def test_a_thinned_listing_over_the_guard_is_held(fault_redis: RedisServer, tmp_path: Path) -> None:
    with fault_run(tmp_path, fault_redis, orgs=3, bookings=30, seed=63) as run:
        out = _scenario(run, {"drop_fraction": 0.6}, lambda r: (h := _hold(r)) is not None and h)
        assert out["observed"].reason == "guard"
        print(out)


def test_a_forbidden_org_is_inaccessible_not_deleted(
    fault_redis: RedisServer, tmp_path: Path
) -> None:
    with fault_run(tmp_path, fault_redis, orgs=3, bookings=30, seed=64) as run:
        out = _scenario(
            run, {"forbidden": True}, lambda r: b"inaccessible_since" in _meta(r), _refused
        )
        logs = _logs(run)
        assert logs.count(f"org inaccessible org_id={ORG}") == 1
        assert f"org accessible again org_id={ORG}" in logs
        print(out)
