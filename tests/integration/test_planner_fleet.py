"""The planner with real workers and beat: discovery, a short budget, adaptivity."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from etbridge import keys
from tests.support.fleet import fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.slow


def _baselined(client: redis.Redis, org: str) -> bool:
    return client.hget(keys.DEFAULT.org_meta(org, "bookings"), "baselined") == b"1"


def test_discovery_baselines_new_orgs_and_drops_vanished_ones(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    with Sandbox.start(orgs=2, bookings=5, seed=21, rate_limit=600) as sb:
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_ORGS="",
            ETBRIDGE_RATE_LIMIT="600",
            ETBRIDGE_DISCOVERY_INTERVAL="3",
        )
        with fleet(env, tmp_path) as f:
            f.worker(concurrency=2)
            f.beat()
            wait_for(
                lambda: _baselined(client, "1001") and _baselined(client, "1002"),
                60,
                "the two orgs' baselines",
            )
            new = sb.add_org(bookings=3)
            wait_for(lambda: _baselined(client, new), 60, f"org {new} discovered and baselined")
            sb.mutate(1, org=new, kinds=["create"])
            wait_for(
                lambda: client.xlen(keys.DEFAULT.outbox(new)) >= 1,
                60,
                f"a change in org {new} detected",
            )
            sb.remove_org("1002")
            wait_for(
                lambda: "removed_at" in json.loads(client.hget(keys.DEFAULT.orgs, "1002") or b"{}"),
                60,
                "org 1002 marked gone",
            )
            time.sleep(1)  # a poll already planned for 1002 may still run once
            before = sb.counters()["list_requests_by_org"].get("1002", 0)
            polls_1001 = sb.counters()["list_requests_by_org"].get("1001", 0)
            wait_for(
                lambda: sb.counters()["list_requests_by_org"].get("1001", 0) >= polls_1001 + 3,
                60,
                "three more polls of org 1001",
            )
            assert sb.counters()["list_requests_by_org"].get("1002", 0) == before
            # Its state is kept (retention), only polling stops.
            assert _baselined(client, "1002")


def test_short_budget_no_429_bounded_queue_and_adaptive(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    orgs = [str(1001 + i) for i in range(20)]
    hot = orgs[:2]
    with Sandbox.start(orgs=20, bookings=3, seed=22, rate_limit=30) as sb:
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_ORGS=",".join(orgs),
            ETBRIDGE_RATE_LIMIT="30",
            ETBRIDGE_POLL_INTERVAL="10",
            ETBRIDGE_SWEEP_INTERVAL="3600",
        )
        with fleet(env, tmp_path) as f:
            f.worker(concurrency=2)
            f.beat()
            wait_for(lambda: all(_baselined(client, o) for o in orgs), 150, "20 baselines")
            start = sb.counters()["list_requests_by_org"]
            t0 = time.monotonic()
            longest_queue = 0
            while time.monotonic() - t0 < 100:
                for org in hot:
                    sb.mutate(1, org=org, kinds=["update"])
                longest_queue = max(longest_queue, int(client.llen("poll")))
                time.sleep(2)
            end = sb.counters()["list_requests_by_org"]
            status = subprocess.run(
                [sys.executable, "-m", "etbridge", "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        doc = json.loads(status.stdout)
        polls = {o: end.get(o, 0) - start.get(o, 0) for o in orgs}
        counters = sb.counters()
    assert counters["served_429"] == 0
    assert max(counters["requests_per_window"].values()) <= 30
    # The planner never queues more than the budget can serve soon.
    assert longest_queue <= 10, longest_queue
    bound = doc["planner"]["latency_bound"]
    assert 50 <= bound <= 60  # 1.25 x 60*20/30 + a tick
    # Every org was polled within the bound that status reports (100 s > bound).
    assert min(polls.values()) >= int(100 // bound), polls
    quiet = [polls[o] for o in orgs if o not in hot]
    assert min(polls[o] for o in hot) > sum(quiet) / len(quiet), polls
