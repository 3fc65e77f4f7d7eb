"""The planner's own lateness, without workers: the pure dispatcher ticked in simulated time.

Each tick (1 s) plans with ``scheduler.plan_rates`` (every 10 s, as the
planner does) and ``scheduler.dispatch``; every poll "runs" at its send time
for 50 ms and sees the changes made before its send time (Poisson, uniform
or 80/20 over the orgs), which feed its estimate. Lateness = send time -
deadline (negative: sent early): what the planner adds to the dispatch delay
before any worker sees the poll (bench/latency.py measures the pickup after
it). Utilisation = sends a second over the measured span / (B/60); mean/T
and p99/T: detection latency over the round-robin cycle T = 60·O/B.

    python bench/dispatch_sim.py [--ticks 1000]
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import write_results

from etbridge import scheduler
from etbridge.scheduler import Budget, PlanConfig, UnitView

CASES = [(100, 10, "uniform"), (100, 10, "80/20"), (100, 50, "uniform"), (100, 50, "80/20")]
CASES += [(400, 200, "uniform"), (400, 200, "80/20")]
CHURN_PER_ORG = 0.05  # changes a second, as bench/latency.py
WARM_TICKS = 60


def simulate(limit: int, orgs: int, shape: str, ticks: int, seed: int = 2) -> dict[str, Any]:
    cfg = PlanConfig(poll_interval=1.0, sweep_interval=3600.0, tick=1.0, lookahead=2.0)
    rng = random.Random(seed)
    start = 1_000_000.0
    ids = [str(1000 + i) for i in range(orgs)]
    hot = max(1, round(0.2 * orgs))
    share = 0.8 if shape == "80/20" else hot / orgs
    total = CHURN_PER_ORG * orgs
    rates = {
        o: total * (share / hot if i < hot else (1 - share) / (orgs - hot))
        for i, o in enumerate(ids)
    }
    units = {o: UnitView(o, "bookings", baselined=True, last_sweep_due=start) for o in ids}
    # Every change of the run, drawn up front: a poll sent ahead of the tick that
    # plans it sees the changes made before its send time, not before the tick.
    pending: dict[str, list[float]] = {o: [] for o in ids}
    for o in ids:
        t = start
        while t < start + ticks + 10:
            t += rng.expovariate(rates[o])
            pending[o].append(t)
    latencies: list[float] = []
    busy_until: dict[str, float] = {}
    grants: list[float] = []
    late: list[float] = []
    cursor = 0.0
    alloc = None
    for tick in range(ticks):
        now = start + tick + rng.uniform(0.0, 0.05)
        views = [replace(u, busy=busy_until.get(o, 0.0) > now) for o, u in units.items()]
        if alloc is None or tick % 10 == 0:
            alloc = scheduler.plan_rates(views, limit, cfg)
        window = [g for g in grants if g > now - scheduler.BUDGET_WINDOW]
        freeing = sum(1 for g in window if g <= now - scheduler.BUDGET_WINDOW + cfg.lookahead)
        budget = Budget(limit=limit, used=len(window), freeing=freeing, next_send=cursor)
        decisions = scheduler.dispatch(now, views, alloc, budget, cfg)
        cursor = scheduler.next_send(decisions, views, limit)
        for d in decisions:
            if tick >= WARM_TICKS:
                late.append(d.send_at - d.due)
            busy_until[d.org_id] = d.send_at + 0.05
            grants.append(d.send_at)
            u = units[d.org_id]
            found = pending[d.org_id][: bisect.bisect_right(pending[d.org_id], d.send_at)]
            if tick >= WARM_TICKS:
                latencies += [d.send_at - t for t in found if t >= start + WARM_TICKS]
            seen = u.changes.observe(len(found), d.send_at)
            units[d.org_id] = replace(u, last_poll_due=d.anchor, changes=seen)
            del pending[d.org_id][: len(found)]
    late.sort()
    latencies.sort()
    cycle = 60.0 * orgs / limit
    span = ticks - WARM_TICKS
    sent = sum(1 for g in grants if g >= start + WARM_TICKS)
    n = len(late)
    return {
        "limit": limit,
        "orgs": orgs,
        "shape": shape,
        "polls": n,
        "lateness_p50_s": round(late[n // 2], 3) if n else None,
        "lateness_p99_s": round(late[int(n * 0.99)], 3) if n else None,
        "late_over_0.5s": round(sum(1 for v in late if v > 0.5) / n, 3) if n else None,
        "utilisation": round(sent / (span * limit / 60), 3),
        "latency_mean_over_T": round(statistics.fmean(latencies) / cycle, 3),
        "latency_p99_over_T": round(latencies[int(len(latencies) * 0.99)] / cycle, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1000)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = [simulate(b, o, shape, args.ticks) for b, o, shape in CASES]
    print(
        f"{'B':>4} {'orgs':>5} {'shape':<8} {'polls':>6} {'late p50':>9} {'late p99':>9} "
        f"{'>0.5s':>6} {'util':>5} {'mean/T':>7} {'p99/T':>6}"
    )
    for r in rows:
        print(
            f"{r['limit']:>4} {r['orgs']:>5} {r['shape']:<8} {r['polls']:>6} "
            f"{r['lateness_p50_s']:>9.3f} {r['lateness_p99_s']:>9.3f} "
            f"{r['late_over_0.5s']:>6.3f} {r['utilisation']:>5.3f} "
            f"{r['latency_mean_over_T']:>7.3f} {r['latency_p99_over_T']:>6.3f}"
        )
    doc = {"benchmark": "dispatch_sim", "ticks": args.ticks, "cases": rows}
    write_results("dispatch_sim", doc, args.output)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
