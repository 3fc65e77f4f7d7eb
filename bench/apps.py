"""Many applications in one fleet: the quiet ones' detection latency under a hot one.

Issue 18's figure: "the hot application's churn does not raise the quiet ones'
detection latency by more than 10 % (side by side with each application alone)".
Two phases, one after the other, each with real ``celery worker`` (one process,
``--concurrency 2``) and ``celery beat`` processes and an apps file
(``ETBRIDGE_APPS_FILE``, ``ETBRIDGE_POLL_INTERVAL=1``, hourly sweeps):

* ``alone``: Q1 and Q2 (``--quiet-orgs`` orgs each, ``--quiet-limit`` requests a
  minute), each alone in its own fleet (its own Redis database and workers);
* ``together``: Q1, Q2 and the hot H (``--hot-orgs`` orgs, ``--hot-limit``, a
  budget the workers cannot keep up with) in one fleet: one worker, one beat.

Each application has its own sandbox process, with the same seed in both
phases (the same orgs and bookings): Event Temple's API is not slowed by
another application's requests, a one-threaded sandbox serving H would be.
Q1 and Q2 get Poisson ``create``/``update`` mutations at ``--quiet-churn`` per
org a second, the same sequence (same seed, same times from the phase's start)
in both phases; H gets the sandbox's own churn (``--hot-churn`` a second).
Latency, matching and summaries are bench/latency.py's (outbox commit minus
the mutation's time). Per application: latency (mean, p99), 429s, token
requests, polls (list requests), budget utilisation and the poll pickup delay
(publication to start in a worker) over the measured window.
Target: Q1's and Q2's mean and p99 together <= 1.10 x alone.
Writes bench/results/apps.json; docs/applications.md has the figures.

    python bench/apps.py            # 60 s warm-up + 120 s measured per phase, ~8 min
    python bench/apps.py --quick    # small sizes, short windows, ~2 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import cpu_times, finish
from latency import (
    BOOKINGS,
    KINDS,
    Group,
    Run,
    committed_events,
    dispatch_delays,
    match,
    mutate_loop,
    org_ids,
    summarize,
)

from etbridge import keys
from etbridge.redisserver import RedisServer
from tests.support.fleet import Fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox, SandboxApp

TARGET = 1.10
CONCURRENCY = 2
PHASES = ("alone", "together")


@dataclass(frozen=True)
class App:
    """One application of the benchmark: its size, budget and churn."""

    name: str
    orgs: int
    limit: int
    churn: float  # mutations a second, over all its orgs
    seed: int

    @property
    def hot(self) -> bool:
        return self.name == "h"

    @property
    def sandbox_app(self) -> SandboxApp:
        return SandboxApp(f"{self.name}-client", f"{self.name}-secret-1234", None, self.limit)

    @property
    def keyspace(self) -> keys.Keyspace:
        return keys.Keyspace(self.name)


@dataclass
class Member:
    """One application in one phase: its sandbox and its measured mutations."""

    app: App
    sandbox: Sandbox
    redis_url: str
    run: Run  # latency.mutate_loop's target: the sandbox and the mutations list
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    ended: float = 0.0


def apps_file(path: Path, members: list[Member]) -> Path:
    path.write_text(
        "".join(
            f'[apps.{m.app.name}]\nclient_id = "{m.app.sandbox_app.client_id}"\n'
            f'client_secret = "{m.app.sandbox_app.client_secret}"\n'
            f'api_url = "{m.sandbox.url}"\nrate_limit = {m.app.limit}\n'
            f"orgs = {json.dumps(org_ids(m.app.orgs))}\n"
            f'sinks = "redis-stream:{m.app.name}:events"\n\n'
            for m in members
        )
    )
    return path


def start_fleet(members: list[Member], logdir: Path) -> Fleet:
    logdir.mkdir(parents=True, exist_ok=True)
    env = fleet_env(
        members[0].sandbox,
        members[0].redis_url,
        ETBRIDGE_APPS_FILE=str(apps_file(logdir / "apps.toml", members)),
        ETBRIDGE_POLL_INTERVAL="1",
        ETBRIDGE_SWEEP_INTERVAL="3600",
        ETBRIDGE_LOG_LEVEL="WARNING",
    )
    del env["ETBRIDGE_CLIENT_ID"], env["ETBRIDGE_CLIENT_SECRET"]
    fleet = Fleet(env, logdir)
    fleet.worker(concurrency=CONCURRENCY)
    fleet.beat()
    return fleet


def baselined(member: Member) -> bool:
    client = redis.Redis.from_url(member.redis_url)
    ks = member.app.keyspace
    try:
        return all(
            client.hget(ks.org_meta(o, "bookings"), "baselined") == b"1"
            for o in org_ids(member.app.orgs)
        )
    finally:
        client.close()


def sample(member: Member) -> dict[str, Any]:
    """The sandbox's counters of the member's application, now."""
    counters = member.sandbox.counters()
    mine = counters["by_app"].get(member.app.sandbox_app.client_id, {})
    return {
        "at": time.time(),
        "api_requests": int(mine.get("api_requests", 0)),
        "served_429": int(mine.get("served_429", 0)),
        "token_requests": int(mine.get("token_requests", 0)),
        "polls": sum(counters.get("list_requests_by_org", {}).values()),
        "requests_per_second": counters.get("requests_per_second", {}),
    }


def mutations_of(member: Member, measure_from: float, measure_to: float) -> list[Any]:
    """(log entry, measured) of the member's mutations: the driver's, or H's churn's."""
    if not member.app.hot:
        return member.run.mutations
    return [
        (e, measure_from <= float(e["at"]) < measure_to)
        for e in member.sandbox.log()
        if e["kind"] in KINDS
    ]


def pending(member: Member, measure_from: float, measure_to: float) -> int:
    events = committed_events(member.redis_url, org_ids(member.app.orgs), member.app.keyspace)
    lat, _ = match(mutations_of(member, measure_from, measure_to), events)
    return sum(v is None for v in lat)


def run_phase(  # noqa: C901, PLR0912, PLR0915 - one phase, step by step
    server: RedisServer,
    phase: str,
    apps: list[App],
    warmup: float,
    window: float,
    drain: float,
    logdir: Path,
) -> dict[str, Any]:
    """Run ``apps`` (alone: each in its own fleet; together: one fleet); their results."""
    base = server.url.rsplit("/", 1)[0]
    members: list[Member] = []
    fleets: list[Fleet] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for n, app in enumerate(apps):
            db = n + 1 if phase == "alone" else 10
            url = f"{base}/{db}"
            if phase == "alone" or n == 0:
                redis.Redis.from_url(url).flushdb()
            sb = Sandbox.start(
                orgs=app.orgs,
                bookings=BOOKINGS,
                seed=app.seed,
                rate_limit=app.limit,
                apps=[app.sandbox_app],
            )
            run = Run(Group(app.orgs, "uniform", app.limit), "planner", sb, url)
            members.append(Member(app, sb, url, run))
        groups = [[m] for m in members] if phase == "alone" else [members]
        for group in groups:
            fleets.append(
                start_fleet(group, logdir / f"{phase}-{'-'.join(m.app.name for m in group)}")
            )
        wait_for(lambda: all(baselined(m) for m in members), 180, f"{phase}: every baseline")
        measure_from = time.time() + warmup
        measure_to = measure_from + window
        names = ", ".join("+".join(m.app.name for m in group) for group in groups)
        print(
            f"  {phase} ({names}): baselined, measuring {window:g}s after {warmup:g}s", flush=True
        )
        for m in members:
            if m.app.hot:
                m.sandbox.churn(m.app.churn)
                continue
            thread = threading.Thread(
                target=mutate_loop,
                args=(
                    [m.run],
                    m.run.group,
                    m.app.churn,
                    measure_from,
                    measure_to,
                    stop,
                    m.app.seed,
                ),
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        time.sleep(max(0.0, measure_from - time.time()))
        busy0, total0 = cpu_times()
        for m in members:
            m.before = sample(m)
        queue: list[int] = []
        broker = [redis.Redis.from_url(u) for u in sorted({m.redis_url for m in members})]
        while time.time() < measure_to:
            queue.append(max(int(c.llen("poll")) for c in broker))
            time.sleep(min(2.0, max(0.0, measure_to - time.time())))
        for m in members:
            m.after = sample(m)
        busy1, total1 = cpu_times()
        for c in broker:
            c.close()
        cap = measure_to + drain
        while time.time() < cap:
            if all(pending(m, measure_from, measure_to) == 0 for m in members):
                break
            time.sleep(2.0)
        stop.set()
        for m in members:
            if m.app.hot:
                m.sandbox.churn(0)
        for thread in threads:
            thread.join(30)
        ended = time.time()
        for fleet in fleets:
            fleet.stop()
        results = {}
        for m in members:
            results[m.app.name] = result(m, measure_from, measure_to, ended)
        cores = max(1e-9, (total1 - total0) / max(1e-9, measure_to - measure_from))
        return {
            "apps": results,
            "fleets": [[m.app.name for m in group] for group in groups],
            "poll_queue": {
                "mean": round(sum(queue) / max(1, len(queue)), 1),
                "max": max(queue, default=0),
            },
            "machine_cpu_busy": round(
                (busy1 - busy0) / max(1e-9, measure_to - measure_from) / cores, 3
            ),
        }
    finally:
        stop.set()
        for fleet in fleets:
            with contextlib.suppress(Exception):
                fleet.stop()
        for m in members:
            with contextlib.suppress(Exception):
                m.sandbox.stop()


def result(member: Member, measure_from: float, measure_to: float, ended: float) -> dict[str, Any]:
    app = member.app
    events = committed_events(member.redis_url, org_ids(app.orgs), app.keyspace)
    lat, rows = match(mutations_of(member, measure_from, measure_to), events)
    # As bench/latency.py: a change still undetected counts at its lower bound.
    latencies = [r["latency"] if r["latency"] is not None else ended - r["at"] for r in rows]
    before, after = member.before, member.after
    span = after["at"] - before["at"]
    first, last = math.ceil(before["at"]), math.floor(after["at"])
    per_second = after["requests_per_second"]
    in_span = sum(v for k, v in per_second.items() if first <= int(k) < last)
    delays, pickups = dispatch_delays(member.redis_url, measure_from, app.keyspace)
    return {
        "orgs": app.orgs,
        "limit_per_minute": app.limit,
        "churn_per_s": app.churn,
        "measured_mutations": len(lat),
        "undetected": sum(v is None for v in lat),
        "latency_s": summarize(latencies),
        "served_429": after["served_429"] - before["served_429"],
        "served_429_total": after["served_429"],
        "token_requests": after["token_requests"] - before["token_requests"],
        "token_requests_total": after["token_requests"],
        "polls": after["polls"] - before["polls"],
        "polls_per_s": round((after["polls"] - before["polls"]) / max(1e-9, span), 2),
        "api_requests": after["api_requests"] - before["api_requests"],
        # Requests in the measured span's whole seconds over what the budget allows in it.
        "utilisation": round(in_span / (app.limit * max(1, last - first) / 60), 3),
        "dispatch_delay_s": summarize(delays),
        "pickup_delay_s": summarize(pickups),
        "latencies_s": [round(v, 3) for v in latencies],
    }


def targets(alone: dict[str, Any], together: dict[str, Any], quiet: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # The quiet applications' mutations pooled: twice the samples, half the noise.
    pooled = {
        phase: summarize([v for name in quiet for v in doc[name]["latencies_s"]])
        for phase, doc in (("alone", alone), ("together", together))
    }
    for name in [*quiet, "pooled"]:
        a, b = (
            (pooled["alone"], pooled["together"])
            if name == "pooled"
            else (alone[name]["latency_s"], together[name]["latency_s"])
        )
        mean_ratio = b["mean"] / a["mean"] if a.get("mean") else math.inf
        p99_ratio = b["p99"] / a["p99"] if a.get("p99") else math.inf
        out[name] = {
            "mean_ratio": round(mean_ratio, 3),
            "p99_ratio": round(p99_ratio, 3),
            # The noise of the mean's ratio: both means' standard errors, relative.
            "mean_ratio_sem": round(
                mean_ratio * math.hypot(a["sem"] / a["mean"], b["sem"] / b["mean"]), 3
            )
            if a.get("mean") and b.get("mean")
            else None,
            "alone": {k: a.get(k) for k in ("n", "mean", "sem", "p99")},
            "together": {k: b.get(k) for k in ("n", "mean", "sem", "p99")},
            "mean_le_1.10_met": mean_ratio <= TARGET,
            "p99_le_1.10_met": p99_ratio <= TARGET,
        }
    out["met"] = all(out[n]["mean_le_1.10_met"] and out[n]["p99_le_1.10_met"] for n in quiet)
    return out


def print_report(doc: dict[str, Any]) -> None:
    print()
    print(
        f"detection latency (s) per application, alone (each in its own fleet) vs together "
        f"(one fleet: 1 worker x {CONCURRENCY} slots, 1 beat)"
    )
    header = (
        f"{'app':<4} {'phase':<9} {'orgs':>4} {'B/min':>6} {'n':>5} {'mean':>6} {'sem':>5} "
        f"{'p50':>6} {'p99':>6} {'max':>6} {'undet':>5} {'429':>4} {'tokens':>6} "
        f"{'polls/s':>7} {'util':>5} {'pickup99':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in doc["config"]["apps"]:
        for phase in PHASES:
            r = doc["phases"][phase]["apps"].get(name)
            if r is None:
                continue
            s = r["latency_s"]
            pickup = r["pickup_delay_s"].get("p99")
            print(
                f"{name:<4} {phase:<9} {r['orgs']:>4} {r['limit_per_minute']:>6} "
                f"{s.get('n', 0):>5} {s.get('mean', 0):>6.2f} {s.get('sem', 0):>5.2f} "
                f"{s.get('p50', 0):>6.2f} {s.get('p99', 0):>6.2f} {s.get('max', 0):>6.2f} "
                f"{r['undetected']:>5} {r['served_429']:>4} {r['token_requests_total']:>6} "
                f"{r['polls_per_s']:>7.2f} {r['utilisation']:>5.2f} "
                f"{(f'{pickup:.3f}' if pickup is not None else '-'):>8}"
            )
    for phase in PHASES:
        p = doc["phases"][phase]
        print(
            f"{phase}: poll queue mean {p['poll_queue']['mean']:g} max {p['poll_queue']['max']}, "
            f"machine CPU busy {p['machine_cpu_busy']:.0%}"
        )
    t = doc["targets"]
    for name, v in t.items():
        if name == "met":
            continue
        print(
            f"{name}: together / alone: mean {v['together']['mean']:.2f} / "
            f"{v['alone']['mean']:.2f} = {v['mean_ratio']:.3f} (+/- {v['mean_ratio_sem']}) "
            f"{'met' if v['mean_le_1.10_met'] else 'MISSED'}; p99 {v['together']['p99']:.2f} / "
            f"{v['alone']['p99']:.2f} = {v['p99_ratio']:.3f} "
            f"{'met' if v['p99_le_1.10_met'] else 'MISSED'}"
        )
    print(
        f"target (q1 and q2: mean and p99 <= {TARGET:.2f} x alone): "
        f"{'met' if t['met'] else 'MISSED'}"
    )
    print(
        "(n: measured mutations; tokens: token requests over the phase; util: requests / "
        "budget over the window; pickup99: p99 s from a poll's publication to its start)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short windows")
    parser.add_argument("--quiet-orgs", type=int, default=10)
    parser.add_argument("--quiet-limit", type=int, default=100)
    parser.add_argument(
        "--quiet-churn", type=float, default=0.2, help="mutations/s per quiet org (0.2)"
    )
    parser.add_argument("--hot-orgs", type=int, help="default 100 (quick: 40)")
    parser.add_argument("--hot-limit", type=int, default=6000, help="requests/min (6000)")
    parser.add_argument("--hot-churn", type=float, help="mutations/s over H (20; quick: 5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds (60; quick: 15)")
    parser.add_argument("--window", type=float, help="measured seconds (120; quick: 30)")
    parser.add_argument("--drain", type=float, default=30.0, help="max seconds to drain")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (15.0 if args.quick else 60.0)
    window = args.window or (30.0 if args.quick else 120.0)
    hot_orgs = args.hot_orgs or (40 if args.quick else 100)
    hot_churn = args.hot_churn or (5.0 if args.quick else 20.0)
    quiet = [
        App(name, args.quiet_orgs, args.quiet_limit, args.quiet_churn * args.quiet_orgs, seed)
        for name, seed in (("q1", 181), ("q2", 182))
    ]
    hot = App("h", hot_orgs, args.hot_limit, hot_churn, 183)
    logdir = Path(tempfile.mkdtemp(prefix="etbridge-apps-"))
    print(f"apps: logs in {logdir}", flush=True)
    started = time.monotonic()
    phases: dict[str, Any] = {}
    with RedisServer() as server:
        phases["alone"] = run_phase(server, "alone", quiet, warmup, window, args.drain, logdir)
        phases["together"] = run_phase(
            server, "together", [*quiet, hot], warmup, window, args.drain, logdir
        )
    document = {
        "benchmark": "apps",
        "quick": args.quick,
        "config": {
            "apps": {
                a.name: {"orgs": a.orgs, "limit": a.limit, "churn_per_s": a.churn}
                for a in [*quiet, hot]
            },
            "worker_processes": 1,
            "concurrency": CONCURRENCY,
            "poll_interval_s": 1.0,
            "bookings_per_org": BOOKINGS,
            "kinds": KINDS,
            "warmup_s": warmup,
            "window_s": window,
            "drain_max_s": args.drain,
        },
        "phases": phases,
        "targets": targets(
            phases["alone"]["apps"], phases["together"]["apps"], [a.name for a in quiet]
        ),
    }
    return finish(document, started, print_report, args.output)


if __name__ == "__main__":
    sys.exit(main())
