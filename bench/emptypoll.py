"""Worker CPU per incremental poll that finds nothing (issue 12's target: <= 3 ms).

    .venv/bin/python bench/emptypoll.py [--polls 300] [--orgs 5] [--no-worker]
        [--pool prefork,threads,solo] [--profile N]

Against a real sandbox and a real Redis, after every org's baseline, with no
churn, three layers of the same poll side by side in one run:

- ``poller``: ``Poller.poll`` alone (lease, meta, one request, final commit);
- ``task``: the ``poll_org`` task body run eagerly in this process (adds the
  planner's bookkeeping, metrics and logs; Celery's tracing, no broker);
- ``worker``: a real ``celery worker`` (concurrency 1, queue ``poll``) fed the
  polls as the planner sends them; its CPU (all its processes) less what it
  spends idle over the same time, per poll: the figure the issue quotes, split
  into the main process and the pool's children; ``--pool`` adds other pools
  side by side (``worker-threads``...).

CPU is this process's (``time.process_time``) for the first two and
``/proc`` for the worker; the task layer also counts its Redis round trips.
``--profile N`` prints the N hottest functions of the task layer (cProfile,
by own time; ``EMPTYPOLL_SORT=cumulative``, ``EMPTYPOLL_CALLERS=NAME``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    machine_facts,
    percentile,
    process_cpu_seconds,
    process_tree,
    tree_cpu_seconds,
    write_results,
)
from redis.connection import AbstractConnection

from etbridge import keys
from etbridge.redisserver import RedisServer
from tests.support.fleet import fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox

TARGET_MS = 3.0


def _per_poll(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "mean_ms": round(sum(ms) / len(ms), 3),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
    }


def _in_process(
    sb: Sandbox, redis_url: str, orgs: list[str], polls: int, profile: int
) -> dict[str, Any]:
    # The task module reads its settings from the environment at import, as a worker does.
    os.environ.update(fleet_env(sb, redis_url, ETBRIDGE_RATE_LIMIT="100000"))
    from etbridge import runtime, tasks
    from etbridge.worker import settings

    rt = runtime.get(settings)
    poller = rt.poller()
    for org in orgs:  # baselines, and a first incremental poll: warm caches and token
        poller.poll(org, "sweep")
        poller.poll(org)
    outbox_before = sum(int(rt.redis.xlen(keys.DEFAULT.outbox(o))) for o in orgs)
    out: dict[str, Any] = {}
    for layer in ("poller", "task"):
        samples = []
        for n in range(polls):
            org = orgs[n % len(orgs)]
            started = time.process_time()
            if layer == "poller":
                poller.poll(org)
            else:
                tasks.poll_org.apply(
                    (org, "incremental"), {"resource": "bookings", "due": time.time()}
                ).get()
            samples.append(time.process_time() - started)
        out[layer] = _per_poll(samples)
    out["task"]["redis_round_trips"] = _round_trips(
        lambda org: tasks.poll_org.apply((org, "incremental"), {"due": time.time()}).get(), orgs
    )
    if profile:
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        for n in range(polls):
            tasks.poll_org.apply(
                (orgs[n % len(orgs)], "incremental"), {"resource": "bookings", "due": time.time()}
            ).get()
        prof.disable()
        stats = pstats.Stats(prof).sort_stats(os.environ.get("EMPTYPOLL_SORT", "tottime"))
        stats.print_stats(profile)
        if os.environ.get("EMPTYPOLL_CALLERS"):
            stats.print_callers(os.environ["EMPTYPOLL_CALLERS"])
    out["events_found"] = (
        sum(int(rt.redis.xlen(keys.DEFAULT.outbox(o))) for o in orgs) - outbox_before
    )
    return out


def _split(pid: int) -> tuple[float, float]:
    """(main process, pool children) CPU seconds of a worker."""
    tree = process_tree(pid)
    children = sum(process_cpu_seconds(p) or 0.0 for p in tree if p != pid)
    return process_cpu_seconds(pid) or 0.0, children


def _round_trips(poll: Callable[[str], object], orgs: list[str], polls: int = 50) -> float:
    """Redis round trips per poll (a command or a pipeline: one send each), counted
    in this process: unlike CPU time, a count the machine's load does not blur."""
    sent = [0]
    original: Any = AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        for n in range(polls):
            poll(orgs[n % len(orgs)])
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return sent[0] / polls


def _worker(sb: Sandbox, redis_url: str, orgs: list[str], polls: int, pool: str) -> dict[str, Any]:
    from etbridge import tasks

    logdir = Path(tempfile.mkdtemp(prefix="emptypoll-"))
    env = fleet_env(sb, redis_url, ETBRIDGE_RATE_LIMIT="100000")
    client = tasks.runtime.get(tasks.settings).redis
    with fleet(env, logdir) as f:
        proc = f.worker(concurrency=1, queues="poll", pool=pool)
        # Ready once it has run a first poll (imports, fork, token, connections).
        client.delete(keys.DEFAULT.plan_delays)
        tasks.publish_poll({"org_id": orgs[0], "mode": "incremental", "due": time.time()})
        wait_for(lambda: client.llen(keys.DEFAULT.plan_delays) >= 1, 120, "the worker's first poll")
        # Idle CPU (the broker's polling, the pool's timers) over a few seconds.
        idle_s = 5.0
        before = tree_cpu_seconds(proc.popen.pid)
        time.sleep(idle_s)  # a measured span of idleness, not a wait for a condition
        idle_cpu_per_s = (tree_cpu_seconds(proc.popen.pid) - before) / idle_s
        client.delete(keys.DEFAULT.plan_delays)
        before = tree_cpu_seconds(proc.popen.pid)
        split_before = _split(proc.popen.pid)
        started = time.monotonic()
        for n in range(polls):
            payload = {"org_id": orgs[n % len(orgs)], "mode": "incremental", "due": time.time()}
            tasks.publish_poll(payload)
        wait_for(lambda: client.llen(keys.DEFAULT.plan_delays) >= polls, 300, f"{polls} polls")
        # The last poll's bookkeeping after its start: give it a moment to finish.
        time.sleep(0.5)
        seconds = time.monotonic() - started
        busy = tree_cpu_seconds(proc.popen.pid) - before - idle_cpu_per_s * seconds
        main, children = (b - a for a, b in zip(split_before, _split(proc.popen.pid), strict=True))
    return {
        "pool": pool,
        "mean_ms": round(busy / polls * 1000, 3),
        # Where it goes (idle CPU not subtracted): the main process (broker, acks, the
        # pool's IPC) and the pool's children (the task); one process for solo/threads.
        "main_ms": round(main / polls * 1000, 3),
        "children_ms": round(children / polls * 1000, 3),
        "idle_cpu_per_s": round(idle_cpu_per_s, 4),
        "seconds": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--orgs", type=int, default=5)
    parser.add_argument("--bookings", type=int, default=100)
    parser.add_argument("--no-worker", action="store_true", help="skip the celery worker layer")
    parser.add_argument(
        "--pool",
        default="prefork",
        help="celery worker pools to measure, comma-separated (prefork, threads, solo); "
        "the first is the 'worker' layer, the others 'worker-POOL'",
    )
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with (
        RedisServer() as server,
        Sandbox.start(orgs=args.orgs, bookings=args.bookings, seed=3, rate_limit=1_000_000) as sb,
    ):
        orgs = sorted(sb.truth()["orgs"])
        layers = _in_process(sb, server.url, orgs, args.polls, args.profile)
        if not args.no_worker:
            for n, pool in enumerate(p for p in args.pool.split(",") if p):
                name = "worker" if n == 0 else f"worker-{pool}"
                layers[name] = _worker(sb, server.url, orgs, args.polls, pool)
    document = {
        "benchmark": "emptypoll",
        "config": {
            "polls": args.polls,
            "orgs": args.orgs,
            "bookings_per_org": args.bookings,
            "pools": args.pool,
        },
        "layers": layers,
        "target_ms": TARGET_MS,
        "machine": machine_facts(),
    }
    print()
    print("worker CPU per incremental poll that finds nothing (ms)")
    print(f"{'layer':<16} {'mean':>7} {'p50':>7} {'p90':>7}  main+children (workers)")
    for name, row in layers.items():
        if not isinstance(row, dict):
            continue
        p50, p90 = row.get("p50_ms"), row.get("p90_ms")
        split = f"  {row['main_ms']:.2f}+{row['children_ms']:.2f}" if "main_ms" in row else ""
        label = f"{name} ({row['pool']})" if name == "worker" else name
        print(
            f"{label:<16} {row['mean_ms']:>7.2f} "
            f"{(f'{p50:.2f}' if p50 is not None else '-'):>7} "
            f"{(f'{p90:.2f}' if p90 is not None else '-'):>7}{split}"
        )
    print(f"events found: {layers['events_found']} (expected 0); target <= {TARGET_MS:g} ms")
    print(f"Redis round trips per poll (task layer): {layers['task']['redis_round_trips']:g}")
    path = write_results("emptypoll", document, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
