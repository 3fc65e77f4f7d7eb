"""Deletion safety: what confirmation costs, and how fast a deletion is announced with it.

Part 1, cost (in process: the real poller, client and Redis against a sandbox
with the rate limit lifted). Requests ``GET /v2/bookings/{id}`` that sweeps
spend per 100 real deletions, counted by the sandbox, in three cases:

* ``spread``: 100 deletions over 10 sweeps of a 500-booking org (10 per sweep:
  each one is confirmed);
* ``batched``: 100 deletions at once in a 2,000-booking org (5 % of it, under
  the guard: a sample of 5 stands for all);
* ``lying``: no deletion, a listing that leaves out 2 % of a 2,000-booking org
  (the sample finds the bookings; nothing is announced).

Part 2, latency at 100/min (real ``celery worker`` + ``celery beat``,
``ETBRIDGE_RATE_LIMIT=100``, 5 orgs x 100 bookings, ``ETBRIDGE_SWEEP_INTERVAL``
60 s): one booking deleted every few seconds in a random org for the window;
detection latency = the commit of its ``deleted`` event (the outbox entry's
millisecond id, Redis's clock) minus the deletion's ``at`` in the sandbox's log
(same machine). Sweeps find deletions, so the sweep interval bounds it; the
confirmation adds one GET per deletion to the sweep's end.

    python bench/deletions.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from _common import machine_facts, percentile, write_results

from etbridge import keys
from etbridge.poller import Poller
from etbridge.redisserver import RedisServer
from tests.support.fleet import fleet, fleet_env, wait_for
from tests.support.replies import stream
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for


def _gets(sb: Sandbox, org: str) -> int:
    return int(sb.counters()["get_requests_by_org"].get(org, 0))


def _lists(sb: Sandbox, org: str) -> int:
    return int(sb.counters()["list_requests_by_org"].get(org, 0))


def cost_case(name: str, bookings: int, rounds: int, per_round: int, drop: float) -> dict[str, Any]:
    org = "1001"
    with (
        RedisServer() as server,
        Sandbox.start(orgs=1, bookings=bookings, seed=5, rate_limit=1_000_000) as sb,
    ):
        rt = runtime_for(sb, server.url, orgs=[org])
        p = Poller(rt.redis, rt.settings, rt.api)
        p.poll(org)
        sb.reset()
        deleted = announced = 0
        for _ in range(rounds):
            if per_round:
                sb.mutate(per_round, org=org, kinds=["delete"])
                deleted += per_round
            if drop:
                sb.glitch(org, drop_fraction=drop)
            (result,) = p.poll(org, "sweep")
            announced += result.deleted
        gets, lists = _gets(sb, org), _lists(sb, org)
        rt.session.close()
        rt.redis.close()
    return {
        "case": name,
        "bookings": bookings,
        "sweeps": rounds,
        "deleted": deleted,
        "announced": announced,
        "confirmation_gets": gets,
        "listing_requests": lists,
        "gets_per_100_deletions": round(100 * gets / deleted, 1) if deleted else None,
    }


def latency(window: float, orgs: int, bookings: int, sweep_interval: float) -> dict[str, Any]:
    rng = random.Random(7)
    with (
        RedisServer() as server,
        Sandbox.start(orgs=orgs, bookings=bookings, seed=9, rate_limit=100) as sb,
        tempfile.TemporaryDirectory() as logdir,
    ):
        env = fleet_env(
            sb,
            server.url,
            ETBRIDGE_RATE_LIMIT="100",
            # The default poll interval: incremental polls leave the sweeps their share.
            ETBRIDGE_POLL_INTERVAL="30",
            ETBRIDGE_SWEEP_INTERVAL=str(sweep_interval),
        )
        org_ids = [str(1001 + n) for n in range(orgs)]
        client = redis.Redis.from_url(server.url)
        with fleet(env, Path(logdir)) as f:
            f.worker(concurrency=2)
            f.beat()
            wait_for(
                lambda: all(
                    client.hget(keys.DEFAULT.org_meta(o, "bookings"), "baselined") == b"1"
                    for o in org_ids
                ),
                240,
                "every org baselined",
                interval=1,
            )
            sb.reset()
            started = time.time()
            while time.time() - started < window:
                sb.mutate(1, org=rng.choice(org_ids), kinds=["delete"])
                time.sleep(rng.uniform(2.0, 4.0))
            deletions = {(m["org"], m["id"]): m["at"] for m in sb.log() if m["kind"] == "delete"}

            def committed() -> dict[tuple[str, str], float]:
                out: dict[tuple[str, str], float] = {}
                for o in org_ids:
                    for entry_id, fields in stream(client, keys.DEFAULT.outbox(o)):
                        env_ = json.loads(fields[b"event"])
                        if env_["type"].endswith(".deleted"):
                            out[(o, env_["subject"])] = int(entry_id.split(b"-")[0]) / 1000
                return out

            wait_for(
                lambda: set(deletions) <= set(committed()),
                3 * sweep_interval + 120,
                "every deletion announced",
                interval=1,
            )
            seen = committed()
            counters = sb.counters()
            elapsed = time.time() - started
            logs = "".join(proc.output() for proc in f.procs)
        client.close()
        sweeps = logs.count("mode=sweep pages=")
    lat = sorted(seen[k] - at for k, at in deletions.items())
    return {
        "orgs": orgs,
        "bookings_per_org": bookings,
        "rate_limit": 100,
        "sweep_interval": sweep_interval,
        "window_s": window,
        "deletions": len(lat),
        "latency_s": {
            "p50": round(percentile(lat, 50), 1),
            "p95": round(percentile(lat, 95), 1),
            "max": round(max(lat), 1),
            "mean": round(sum(lat) / len(lat), 1),
        },
        "confirmation_gets": sum(counters["get_requests_by_org"].values()),
        "listing_requests": sum(counters["list_requests_by_org"].values()),
        "served_429": counters["served_429"],
        # What the planner made of ETBRIDGE_SWEEP_INTERVAL (the latency's real bound):
        # sweep polls logged, the 5 baselines and any paused slice included.
        "sweeps_completed": sweeps,
        # Sweeps whose confirmations found the sweeps' budget share spent (left pending).
        "confirmations_deferred": logs.count("deletion confirmations wait for the budget"),
        "sweeps_paused": logs.count("sweep paused"),
        "seconds_per_sweep_per_org": round(elapsed * orgs / sweeps, 1) if sweeps else None,
        "raw_latencies": [round(v, 2) for v in lat],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter latency window")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    cost = [
        cost_case("spread", 500, 10, 10, 0.0),
        cost_case("batched", 2000, 1, 100, 0.0),
        cost_case("lying", 2000, 1, 0, 0.02),
    ]
    lat = latency(60.0 if args.quick else 180.0, 5, 100, 60.0)
    doc = {"machine": machine_facts(), "cost": cost, "latency": lat}
    path = write_results("deletions", doc, args.output)
    print_table(doc)
    print(f"\nwrote {path}")
    return 0


def print_table(doc: dict[str, Any]) -> None:
    print(
        f"{'case':<8} {'bookings':>8} {'sweeps':>6} {'deleted':>7} {'announced':>9} "
        f"{'GETs':>5} {'lists':>5} {'GETs/100 del':>12}"
    )
    for c in doc["cost"]:
        per = c["gets_per_100_deletions"]
        print(
            f"{c['case']:<8} {c['bookings']:>8} {c['sweeps']:>6} {c['deleted']:>7} "
            f"{c['announced']:>9} {c['confirmation_gets']:>5} {c['listing_requests']:>5} "
            f"{(per if per is not None else '-'):>12}"
        )
    lat = doc["latency"]
    q = lat["latency_s"]
    print(
        f"\nlatency at {lat['rate_limit']}/min, sweeps every {lat['sweep_interval']:.0f}s, "
        f"{lat['orgs']} orgs x {lat['bookings_per_org']}: {lat['deletions']} deletions, "
        f"p50 {q['p50']}s p95 {q['p95']}s max {q['max']}s; "
        f"{lat['confirmation_gets']} GETs, {lat['listing_requests']} listings, "
        f"{lat['served_429']} x 429; {lat['sweeps_completed']} sweeps "
        f"(one per org every {lat['seconds_per_sweep_per_org']}s), "
        f"{lat['confirmations_deferred']} deferred confirmations, "
        f"{lat['sweeps_paused']} paused sweeps"
    )


if __name__ == "__main__":
    sys.exit(main())
