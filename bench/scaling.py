"""Figures for docs/scaling.md: Redis memory per booking and per retained event,
Redis commands per poll and per delivered event; single Redis vs a 3-master cluster.

    .venv/bin/python bench/scaling.py [--orgs 20] [--bookings 500] [--engine single|cluster]

In-process: the real poller and relay against the sandbox over HTTP. Commands
are counted from each server's ``INFO stats`` (total_commands_processed, all
nodes of a cluster), minus the bench's own reads; memory from ``used_memory``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import redis

from etbridge import keys
from etbridge.redisserver import RedisServer
from tests.support.delivery import drive
from tests.support.engines import RedisClusterSet
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
        retained = sum(int(rt.redis.xlen(keys.outbox(o))) for o in org_ids)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--bookings", type=int, default=500)
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--engine", choices=["single", "cluster", "both"], default="both")
    args = parser.parse_args()
    engines = ["single", "cluster"] if args.engine == "both" else [args.engine]
    for engine in engines:
        print(json.dumps(run(engine, args.orgs, args.bookings, args.changes)), flush=True)


if __name__ == "__main__":
    main()
