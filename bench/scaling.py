"""Figures for docs/scaling.md: Redis memory per booking and per retained event,
Redis commands per poll and per delivered event; single Redis vs a 3-master cluster.

    .venv/bin/python bench/scaling.py [--orgs 20] [--bookings 500] [--engine single|cluster]
    .venv/bin/python bench/scaling.py --fleet [--orgs 2000] [--bookings 5] [--seconds 60]

In-process: the real poller and relay against the sandbox over HTTP. Commands
are counted from each server's ``INFO stats`` (total_commands_processed, all
nodes of a cluster), minus the bench's own reads; memory from ``used_memory``.
``--fleet``: real Celery workers and beat (planner, sender) instead, on a single
Redis and then on the cluster (a separate Redis as the broker for both), at a
budget the sandbox sets high; orgs polled per second (the sandbox's list
requests) and Redis CPU per node over a window once every org is baselined.
Writes bench/results/scaling_fleet.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import redis

from etbridge import keys
from etbridge.redisserver import RedisServer
from tests.support.delivery import drive
from tests.support.engines import RedisClusterSet
from tests.support.fleet import fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for


def _nodes(deployment: Any) -> list[redis.Redis]:
    ports = [n.port for n in deployment.nodes] if hasattr(deployment, "nodes") else []
    ports = ports or [deployment.port]
    return [redis.Redis(port=p, socket_timeout=10) for p in ports]


def _commands(nodes: list[redis.Redis]) -> int:
    # Each INFO is itself one command; the caller subtracts len(nodes) per reading.
    return sum(int(n.info("stats")["total_commands_processed"]) for n in nodes)


def _cpu(nodes: list[redis.Redis]) -> list[float]:
    """CPU seconds (user + sys) each node has used so far."""
    return [
        float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (n.info("cpu") for n in nodes)
    ]


def _memory(nodes: list[redis.Redis]) -> int:
    return sum(int(n.info("memory")["used_memory"]) for n in nodes)


def _ops(nodes: list[redis.Redis], action: Any) -> tuple[int, float]:
    before = _commands(nodes)
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    return _commands(nodes) - before - len(nodes), seconds


def run(engine: str, orgs: int, bookings: int, changes: int) -> dict[str, Any]:
    deployment: Any = RedisClusterSet() if engine == "cluster" else RedisServer()
    with (
        deployment,
        Sandbox.start(orgs=orgs, bookings=bookings, seed=5, rate_limit=1_000_000) as sandbox,
    ):
        url = deployment.url
        extra = {"broker_url": "memory://"} if engine == "cluster" else {}
        rt = runtime_for(sandbox, url, rate_limit=1_000_000, **extra)
        poller = rt.poller()
        org_ids = sorted(sandbox.truth()["orgs"])
        nodes = _nodes(deployment)
        empty = _memory(nodes)
        cpu_before = _cpu(nodes)
        baseline_ops, baseline_s = _ops(nodes, lambda: [poller.poll(o) for o in org_ids])
        after_baseline = _memory(nodes)
        idle_ops, idle_s = _ops(nodes, lambda: [poller.poll(o) for o in org_ids])
        sandbox.mutate(changes, kinds=["update"])
        change_ops, _ = _ops(nodes, lambda: [poller.poll(o) for o in org_ids])
        retained = sum(int(rt.redis.xlen(keys.DEFAULT.outbox(o))) for o in org_ids)
        after_events = _memory(nodes)
        relay = rt.relay
        delivered = {"n": 0}

        def deliver() -> None:
            drive(
                relay,
                lambda: int(rt.redis.xlen("test:events")) >= retained,
                notify=org_ids,
                timeout=120,
            )
            delivered["n"] = int(rt.redis.xlen("test:events"))

        deliver_ops, deliver_s = _ops(nodes, deliver)
        relay.close()
        cpu = [
            round(after - before, 2) for before, after in zip(cpu_before, _cpu(nodes), strict=True)
        ]
        total = orgs * bookings
        return {
            "engine": engine,
            "orgs": orgs,
            "bookings_per_org": bookings,
            "baseline_seconds": round(baseline_s, 2),
            "memory_per_booking_bytes": round((after_baseline - empty) / total),
            "retained_events": retained,
            "memory_per_retained_event_bytes": round((after_events - after_baseline) / retained)
            if retained
            else None,
            "redis_commands_per_baseline_booking": round(baseline_ops / total, 2),
            "redis_commands_per_idle_poll": round(idle_ops / orgs, 1),
            "idle_orgs_polled_per_second": round(orgs / idle_s, 1),
            "redis_cpu_seconds_per_node": cpu,
            "redis_commands_per_poll_with_changes": round(change_ops / orgs, 1),
            "delivered_events": delivered["n"],
            "redis_commands_per_delivered_event": round(deliver_ops / max(1, delivered["n"]), 2),
            "delivery_seconds": round(deliver_s, 2),
        }


# Phase 1's poll interval (s): 2,000 orgs at 20 s is 100 polls a second at most.
BASELINE_INTERVAL = 20


def _lists(sandbox: Sandbox) -> dict[str, int]:
    """List requests the sandbox served so far, per org (an idle poll is one)."""
    return {str(k): int(v) for k, v in sandbox.counters()["list_requests_by_org"].items()}


def run_fleet(
    engine: str, orgs: int, bookings: int, seconds: float, workers: int, warmup: float
) -> dict[str, Any]:
    """A whole fleet (``workers`` workers at concurrency 2, one beat) on ``engine``."""
    deployment: Any = RedisClusterSet() if engine == "cluster" else RedisServer()
    with (
        deployment,
        RedisServer() as broker,
        Sandbox.start(orgs=orgs, bookings=bookings, seed=5, rate_limit=1_000_000) as sandbox,
        tempfile.TemporaryDirectory(prefix="etb-scaling-fleet-") as logdir,
    ):

        def env(poll_interval: int) -> dict[str, str]:
            return fleet_env(
                sandbox,
                deployment.url,
                ETBRIDGE_BROKER_URL=broker.url,
                ETBRIDGE_RATE_LIMIT="1000000",
                ETBRIDGE_POLL_INTERVAL=str(poll_interval),
                ETBRIDGE_SWEEP_INTERVAL="86400",
                ETBRIDGE_LOG_LEVEL="WARNING",
            )

        nodes = _nodes(deployment)
        for phase in ("baseline", "window"):
            (Path(logdir) / phase).mkdir()
        started = time.monotonic()
        # Phase 1, every org's first listing at a rate the fleet can serve: while
        # the workers bind, the planner serves polls that are behind before new
        # orgs' baselines, so at the window's rate most orgs would wait for theirs.
        with fleet(env(BASELINE_INTERVAL), Path(logdir) / "baseline") as f:
            for _ in range(workers):
                f.worker(concurrency=2)
            f.beat()
            try:
                wait_for(lambda: len(_lists(sandbox)) >= orgs, 600, "every org's baseline", 2.0)
            except AssertionError:
                raise AssertionError(f.logs()) from None
        baseline = time.monotonic() - started
        # Phase 2, the window: every org wants a poll every second; the fleet binds.
        with fleet(env(1), Path(logdir) / "window") as f:
            for _ in range(workers):
                f.worker(concurrency=2)
            f.beat()
            time.sleep(warmup)  # workers and beat start, the planner's rates settle
            lists_before, cpu_before = _lists(sandbox), _cpu(nodes)
            commands_before, machine_before = _commands(nodes), _common.cpu_times()
            fleet_cpu_before = sum(_common.tree_cpu_seconds(p.popen.pid) for p in f.procs)
            t0 = time.monotonic()
            time.sleep(seconds)  # the measured window (nothing to wait for: we count)
            window = time.monotonic() - t0
            lists_after, cpu_after = _lists(sandbox), _cpu(nodes)
            commands = _commands(nodes) - commands_before - len(nodes)
            machine_after = _common.cpu_times()
            fleet_cpu = sum(_common.tree_cpu_seconds(p.popen.pid) for p in f.procs)
            dead = [p.name for p in f.procs if not p.alive()]
        polls = sum(n - lists_before.get(o, 0) for o, n in lists_after.items())
        polled = sum(1 for o, n in lists_after.items() if n > lists_before.get(o, 0))
        busy = machine_after[0] - machine_before[0]
        total = machine_after[1] - machine_before[1]
        return {
            "engine": engine,
            "orgs": orgs,
            "bookings_per_org": bookings,
            "workers": f"{workers} x concurrency 2, 1 beat",
            "baseline_phase_seconds": round(baseline, 1),
            "warmup_seconds": warmup,
            "window_seconds": round(window, 1),
            "orgs_polled_per_second": round(polls / window, 1),
            "distinct_orgs_polled_in_window": polled,
            "redis_cpu_seconds_per_node": [
                round(a - b, 2) for b, a in zip(cpu_before, cpu_after, strict=True)
            ],
            "redis_commands_per_second": round(commands / window),
            "redis_commands_per_poll": round(commands / max(1, polls), 1),
            "fleet_cpu_seconds": round(fleet_cpu - fleet_cpu_before, 1),
            "machine_busy_share": round(busy / total, 2) if total else None,
            "dead_processes": dead,
        }


def _fleet_table(rows: list[dict[str, Any]]) -> None:
    fields = [
        ("orgs polled per second", "orgs_polled_per_second"),
        ("distinct orgs polled in the window", "distinct_orgs_polled_in_window"),
        ("Redis CPU s per node (window)", "redis_cpu_seconds_per_node"),
        ("Redis commands per second", "redis_commands_per_second"),
        ("Redis commands per poll", "redis_commands_per_poll"),
        ("fleet CPU s (workers + beat)", "fleet_cpu_seconds"),
        ("machine busy share", "machine_busy_share"),
    ]
    print(f"{'figure':36} | " + " | ".join(f"{r['engine']:>22}" for r in rows))
    for label, key in fields:
        print(f"{label:36} | " + " | ".join(f"{r[key]!s:>22}" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=None)
    parser.add_argument("--bookings", type=int, default=None)
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--engine", choices=["single", "cluster", "both"], default="both")
    parser.add_argument("--fleet", action="store_true", help="real Celery workers and beat")
    parser.add_argument("--seconds", type=float, default=60.0, help="--fleet: measured window")
    parser.add_argument("--warmup", type=float, default=30.0, help="--fleet: seconds before")
    parser.add_argument("--workers", type=int, default=2, help="--fleet: worker processes")
    args = parser.parse_args()
    engines = ["single", "cluster"] if args.engine == "both" else [args.engine]
    if not args.fleet:
        for engine in engines:
            result = run(engine, args.orgs or 20, args.bookings or 500, args.changes)
            print(json.dumps(result), flush=True)
        return
    rows = []
    for engine in engines:
        rows.append(
            run_fleet(
                engine,
                args.orgs or 2000,
                args.bookings or 5,
                args.seconds,
                args.workers,
                args.warmup,
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    _fleet_table(rows)
    document = {"machine": _common.machine_facts(), "args": vars(args), "results": rows}
    print(f"written: {_common.write_results('scaling_fleet', document)}")


if __name__ == "__main__":
    main()
