"""The planner's per-tick read of every unit (planstore.gather) at fleet size.

    .venv/bin/python bench/gather.py [--orgs 10000] [--resources 1] [--rounds 5]

A real Redis holds ``--orgs`` orgs whose meta and plan hashes are copies of a
real org's, after a sweep and an incremental poll of the sandbox (a few fields
varied per unit). Measured per gather: this process's CPU, wall time and the
Redis server's CPU; beside it, in the same run, the read as it was before
(``EXISTS`` + two ``HGETALL`` per unit, every field decoded), as the baseline.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import redis
from _common import machine_facts, write_results

from etbridge import keys, planstore, scheduler
from etbridge.redisserver import RedisServer
from etbridge.replies import text_hash
from tests.support.fleet import fleet_env
from tests.support.sandbox import Sandbox


def three_commands(
    client: redis.Redis, org_ids: Sequence[str], resources: Sequence[str], now: float
) -> list[scheduler.UnitView]:
    """The baseline, gather as it was: EXISTS + HGETALL meta + HGETALL plan, all decoded."""
    pipe = client.pipeline(transaction=False)
    for org_id in org_ids:
        pipe.exists(keys.DEFAULT.lease(org_id))
        for res in resources:
            pipe.hgetall(keys.DEFAULT.org_meta(org_id, res))
            pipe.hgetall(keys.DEFAULT.plan(org_id, res))
    raw = iter(pipe.execute())
    f, estimate = planstore._f, planstore._estimate
    views = []
    for org_id in org_ids:
        leased = bool(next(raw))
        facts = [(res, text_hash(next(raw)), text_hash(next(raw))) for res in resources]
        ttl = planstore.QUEUED_TTL
        queued = [now - (f(plan, "queued_at") or -math.inf) < ttl for *_, plan in facts]
        for (res, meta, plan), unit_queued in zip(facts, queued, strict=True):
            views.append(
                scheduler.UnitView(
                    org_id=org_id,
                    resource=res,
                    busy=leased or any(queued),
                    queued=unit_queued,
                    retry_at=f(plan, "retry_at") or 0.0,
                    baselined=meta.get("baselined") == "1",
                    urgent_sweep=meta.get("resync") == "1",
                    sweeping=meta.get("sweep_active") == "1",
                    sweeps_only=meta.get("filter_unsupported") == "1",
                    last_poll_due=f(plan, "poll_due"),
                    last_listed=f(meta, "last_poll_at"),
                    last_sweep_due=f(plan, "sweep_due") or f(meta, "last_sweep_at"),
                    changes=estimate(plan, "chg"),
                    deletions=estimate(plan, "del"),
                    poll_pages=max(1.0, f(plan, "poll_pages") or 1.0),
                    sweep_pages=max(1.0, f(plan, "sweep_pages") or 1.0),
                )
            )
    return views


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _measure(client: redis.Redis, rounds: int, read: Callable[[], Any]) -> dict[str, float]:
    cpu, wall, server = [], [], []
    for _ in range(rounds):
        s_before = _server_cpu(client)
        c, w = time.process_time(), time.perf_counter()
        read()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
        server.append(_server_cpu(client) - s_before)
    return {
        "client_cpu_ms": round(statistics.median(cpu) * 1000, 1),
        "wall_ms": round(statistics.median(wall) * 1000, 1),
        "redis_cpu_ms": round(statistics.median(server) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--resources", type=int, choices=[1, 2], default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    resources = ["bookings", "contacts"][: args.resources]
    with (
        RedisServer() as server,
        Sandbox.start(orgs=1, bookings=50, seed=3, rate_limit=1_000_000) as sb,
    ):
        os.environ.update(fleet_env(sb, server.url, ETBRIDGE_RATE_LIMIT="100000"))
        from etbridge import runtime, tasks
        from etbridge.worker import settings

        rt = runtime.get(settings)
        org = sorted(sb.truth()["orgs"])[0]
        rt.poller().poll(org, "sweep")
        tasks.poll_org.apply((org, "incremental"), {"resource": "bookings"}).get()
        meta: dict[Any, Any] = rt.redis.hgetall(keys.DEFAULT.org_meta(org, "bookings"))
        plan: dict[Any, Any] = rt.redis.hgetall(keys.DEFAULT.plan(org, "bookings"))
        rng = random.Random(1)
        now = time.time()
        orgs = [f"9{i:06d}" for i in range(args.orgs)]
        pipe = rt.redis.pipeline(transaction=False)
        for o in orgs:
            for res in resources:
                p: dict[Any, Any] = dict(plan)
                p[b"poll_due"] = repr(now - rng.uniform(0, 600)).encode()
                p[b"chg_n"] = repr(rng.expovariate(0.2)).encode()
                pipe.hset(keys.DEFAULT.org_meta(o, res), mapping=meta)
                pipe.hset(keys.DEFAULT.plan(o, res), mapping=p)
        pipe.execute()
        units: list[scheduler.UnitView] = []

        def new() -> None:
            units[:] = planstore.gather(rt.redis, keys.DEFAULT, orgs, resources, now)

        rows = {
            "hmget_pipeline": _measure(rt.redis, args.rounds, new),
            "three_commands": _measure(
                rt.redis, args.rounds, lambda: three_commands(rt.redis, orgs, resources, now)
            ),
        }
        # Same views either way.
        assert units == three_commands(rt.redis, orgs, resources, now)
    document = {
        "benchmark": "gather",
        "config": {"orgs": args.orgs, "resources": resources, "rounds": args.rounds},
        "meta_fields": len(meta),
        "plan_fields": len(plan),
        "rows": rows,
        "machine": machine_facts(),
    }
    print()
    print(f"planstore.gather, {args.orgs} orgs x {len(resources)} resource(s), median of rounds")
    print(f"{'read':<16} {'client CPU':>11} {'wall':>8} {'Redis CPU':>10}")
    for name, row in rows.items():
        print(
            f"{name:<16} {row['client_cpu_ms']:>9.0f}ms {row['wall_ms']:>6.0f}ms "
            f"{row['redis_cpu_ms']:>8.0f}ms"
        )
    path = write_results("gather", document, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
