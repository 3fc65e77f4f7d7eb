"""Run every benchmark in bench/ and write one report: REPORT.md, report.json and plots.

One after the other (never in parallel: they would measure each other), each
at a size that fits a 2-core machine, in under 15 minutes in all:

========================  ===================================  =============
benchmark                 arguments                            took (2 cores)
========================  ===================================  =============
diff                      (defaults: 2,000 bookings)           5 s
sandbox_throughput        --duration 8                         10 s
token_fleet               (defaults: 16 processes, 3 x 42 s)   2 min
delivery                  (defaults)                           1 min
rate_budget               --quick (L = 300/min, 2 windows)     2.5 min
latency                   (defaults: O = 10 and 50, scaling)   6 min
========================  ===================================  =============

Each writes ``bench/results/<name>.json``; this script then reads them all
and writes ``bench/results/REPORT.md`` (etbridge beside each baseline measured
in the same run, as ratios; machine facts), ``bench/results/report.json``
(the headline figures and every target) and PNG plots (matplotlib, Agg):
``latency_cdf.png``, ``rate_budget_windows.png``, ``token_requests.png``.

    python bench/run_all.py              # everything, ~12 min
    python bench/run_all.py --quick      # every benchmark's smoke size, ~5 min
    python bench/run_all.py --report-only            # re-render from the JSON files
    python bench/run_all.py --only diff latency      # run some, report on all
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from _common import RESULTS_DIR, ROOT, hash_encodings, machine_facts, write_results

BENCH = ROOT / "bench"
# Typographic signs for the Markdown report, spelled as escapes so the source stays ASCII
# where the linter asks for it.
TIMES, NA, MINUS, LE = "\u00d7", "\u2013", "\u2212", "\u2264"
ORDER = (
    "diff",
    "sandbox_throughput",
    "token_fleet",
    "delivery",
    "rate_budget",
    "deletions",
    "emptypoll",
    "latency",
)
FULL_ARGS: dict[str, list[str]] = {
    "diff": [],
    "sandbox_throughput": ["--duration", "8"],
    "token_fleet": [],
    "delivery": [],
    "rate_budget": ["--quick"],
    "deletions": [],
    "emptypoll": ["--pool", "prefork,threads,solo"],
    "latency": [],
}
QUICK_ARGS: dict[str, list[str]] = {
    "diff": ["--quick"],
    "sandbox_throughput": ["--duration", "3"],
    "token_fleet": ["--quick"],
    "delivery": ["--quick"],
    "rate_budget": ["--limit", "300", "--windows", "1"],
    "deletions": ["--quick"],
    "emptypoll": ["--polls", "100"],
    "latency": ["--quick"],
}
# Generous per-benchmark deadlines: a hung benchmark must not hold the report forever.
TIMEOUTS = {
    "diff": 300,
    "sandbox_throughput": 300,
    "token_fleet": 600,
    "delivery": 600,
    "rate_budget": 600,
    "deletions": 900,
    "emptypoll": 600,
    "latency": 2400,
}


def run_one(name: str, args: list[str]) -> dict[str, Any]:
    """Run ``bench/<name>.py``, echoing its output; its exit code, time and last lines."""
    command = [sys.executable, str(BENCH / f"{name}.py"), *args]
    print(f"\n=== {name} {' '.join(args)}", flush=True)
    code = code_version()
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    deadline = started + TIMEOUTS[name]
    timed_out = False
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
        if time.monotonic() > deadline:
            timed_out = True
            proc.kill()
            break
    try:
        exit_code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        exit_code = proc.wait()
    proc.stdout.close()
    seconds = time.monotonic() - started
    print(f"=== {name}: exit {exit_code} in {seconds:.0f}s", flush=True)
    return {
        "command": " ".join(["python", f"bench/{name}.py", *args]),
        "code": code,
        "exit_code": exit_code,
        "timed_out": timed_out,
        "seconds": round(seconds, 1),
        "tail": list(tail)[-10:] if exit_code else [],
    }


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return data


# --- formatting ---------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return "met" if value else "**missed**"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return NA
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(a: float | None, b: float | None, digits: int = 1) -> str:
    """``a / b`` as ``N.Nx`` with a multiplication sign (a dash when undefined)."""
    if a is None or b is None or b == 0:
        return NA
    return f"{a / b:,.{digits}f}{TIMES}"


def processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def code_version() -> str:
    """The commit measured (read-only git), and whether the tree had other changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "etbridge"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} (+ uncommitted changes in etbridge/)" if dirty else head


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# --- sections -------------------------------------------------------------------------


def section_diff(d: dict[str, Any], headline: dict[str, Any]) -> list[str]:
    ours, base = d["etbridge"]["per_page"], d["naive"]["per_page"]
    rows = []
    for case in ("unchanged", "10 changes", "new"):
        o, b = ours[case], base[case]
        rows.append(
            [
                case,
                fmt(o["cpu_ms_median"], 2),
                fmt(b["cpu_ms_median"], 2),
                ratio(b["cpu_ms_median"], o["cpu_ms_median"], 2),
                fmt(o["round_trips"], 0),
                fmt(b["round_trips"], 0),
                ratio(b["round_trips"], o["round_trips"], 0),
            ]
        )
    mem, small, naive = (
        d["etbridge"]["memory"],
        d["etbridge"]["memory_small_org"],
        d["naive"]["memory"],
    )
    raw = d["raw_json_bytes_per_booking"]
    t = d["targets"]
    wide = d.get("etbridge_large_vocabulary")
    headline["diff"] = {
        "unchanged_cpu_ms": ours["unchanged"]["cpu_ms_median"],
        "unchanged_round_trips": ours["unchanged"]["round_trips"],
        "round_trips_naive_over_etbridge": {
            c: r["round_trips"] for c, r in d["naive_over_etbridge"].items()
        },
        "stored_over_raw": d["stored_over_raw"],
    }
    if wide:
        headline["diff"]["large_vocabulary"] = {
            "unchanged_cpu_ms": wide["per_page"]["unchanged"]["cpu_ms_median"],
            "stored_over_raw": d["stored_over_raw_large_vocabulary"],
        }
    lines = [
        "## Change detection per page (`bench/diff.py`, issues 5 and 15)",
        "",
        f"Pages of {d['page_size']} sandbox bookings committed to Redis on loopback "
        f"({d['pages']} pages {TIMES} {d['repeats']} rounds; medians). etbridge = the poller's "
        "page commit (digests, one `HMGET`, the pure diff, one Lua script that writes "
        "snapshots + outbox atomically); naive = full JSON per booking, one `GET` + one "
        "`SET` per record, `XADD` per event after the writes, not atomic.",
        "",
        *table(
            [
                "page",
                "etbridge CPU ms",
                "naive CPU ms",
                "naive / etbridge",
                "etbridge round trips",
                "naive round trips",
                "naive / etbridge",
            ],
            rows,
        ),
        "",
        *table(
            ["stored bytes per booking", "bytes", f"{TIMES} raw JSON"],
            [
                ["raw JSON as the API sends it", fmt(raw, 0), "1.00"],
                [
                    f"etbridge, {mem['bookings']:,} bookings ({hash_encodings(mem)})",
                    fmt(mem["bytes_per_booking"], 0),
                    fmt(d["stored_over_raw"], 2),
                ],
                [
                    f"etbridge, {small['bookings']} bookings ({hash_encodings(small)})",
                    fmt(small["bytes_per_booking"], 0),
                    fmt(d["stored_over_raw_small_org"], 2),
                ],
                [
                    f"naive, string per booking ({naive['bookings']:,})",
                    fmt(naive["bytes_per_booking"], 0),
                    fmt(d["naive_stored_over_raw"], 2),
                ],
            ],
        ),
        "",
        f"Targets: unchanged page ≤ {t['unchanged_cpu_ms_max']:g} ms CPU "
        f"({fmt(t['unchanged_cpu_met'])}), "
        f"≤ 2 round trips ({fmt(t['unchanged_round_trips_met'])}); "
        f"≥ 10{TIMES} fewer round trips than naive ({fmt(t['round_trip_ratio_met'])}); "
        f"stored ≤ {t['stored_over_raw_max']:g} {TIMES} raw ({fmt(t['stored_bytes_met'])}).",
    ]
    if wide:
        wp, wm = wide["per_page"], wide["memory"]
        lines += [
            "",
            f"The same bookings with names and notes drawn from {d['vocabulary_words']:,} "
            f"random words (Zipf; raw JSON {fmt(d['vocabulary_raw_json_bytes_per_booking'], 0)} "
            "B), through the same etbridge store:",
            "",
            *table(
                [
                    "large vocabulary",
                    "unchanged CPU ms",
                    "10 changes CPU ms",
                    "new CPU ms",
                    "bytes per booking",
                    f"{TIMES} raw",
                ],
                [
                    [
                        f"etbridge, {wm['bookings']:,} bookings",
                        fmt(wp["unchanged"]["cpu_ms_median"], 2),
                        fmt(wp["10 changes"]["cpu_ms_median"], 2),
                        fmt(wp["new"]["cpu_ms_median"], 2),
                        fmt(wm["bytes_per_booking"], 0),
                        fmt(d["stored_over_raw_large_vocabulary"], 2),
                    ]
                ],
            ),
            "",
            f"Targets: unchanged ≤ {t['unchanged_cpu_ms_max']:g} ms "
            f"({fmt(t['large_vocabulary_unchanged_cpu_met'])}); stored ≤ "
            f"{t['stored_over_raw_max']:g} {TIMES} raw "
            f"({fmt(t['large_vocabulary_stored_bytes_met'])}).",
        ]
    alts = d.get("layout_alternatives")
    if alts:
        lines += [
            "",
            "Layouts measured on the same records: what etbridge stored before and what it "
            "stores now (the sandbox draws names and notes from small pools, which flatters "
            "a per-org dictionary):",
            "",
            *table(
                ["layout", "bytes per booking", f"{TIMES} raw"],
                [
                    [k, fmt(v["bytes_per_booking"], 0), fmt(v["over_raw"], 2)]
                    for k, v in alts.items()
                ],
            ),
        ]
    wide_alts = d.get("layout_alternatives_large_vocabulary")
    if wide_alts:
        lines += [
            "",
            "The same layouts, large-vocabulary names and notes:",
            "",
            *table(
                ["layout", "bytes per booking", f"{TIMES} raw"],
                [
                    [k, fmt(v["bytes_per_booking"], 0), fmt(v["over_raw"], 2)]
                    for k, v in wide_alts.items()
                ],
            ),
        ]
    return lines


def section_emptypoll(d: dict[str, Any], headline: dict[str, Any]) -> list[str]:
    layers = d["layers"]
    cfg = d["config"]
    lines = [
        "## CPU per incremental poll that finds nothing (`bench/emptypoll.py`, issue 12)",
        "",
        f"{cfg['orgs']} orgs {TIMES} {cfg['bookings_per_org']} bookings, baselined, no churn; "
        f"{cfg['polls']} polls per layer. CPU per poll (ms): `poller` = `Poller.poll` alone; "
        "`task` = the `poll_org` task body run eagerly (adds the planner's bookkeeping, "
        "metrics, logs); `worker` = a real `celery worker` (concurrency 1) fed the polls as "
        "the planner sends them, all its processes, less its idle CPU.",
        "",
    ]
    rows = []
    for name, layer in layers.items():
        if not isinstance(layer, dict):
            continue
        split = ""
        if "main_ms" in layer and layer.get("children_ms"):
            split = f"main {fmt(layer['main_ms'], 2)} + children {fmt(layer['children_ms'], 2)}"
        rows.append(
            [
                name,
                str(layer.get("pool", NA)),
                fmt(layer.get("mean_ms"), 2),
                fmt(layer.get("p50_ms"), 2),
                fmt(layer.get("redis_round_trips"), 0),
                split or NA,
            ]
        )
    lines += table(["layer", "pool", "mean ms", "p50 ms", "Redis round trips", "split"], rows)
    worker = layers.get("worker", {})
    met = worker.get("mean_ms") is not None and worker["mean_ms"] <= d["target_ms"]
    lines += [
        "",
        f"Target: worker CPU per empty poll {LE} {d['target_ms']:g} ms (prefork, the default "
        f"pool): {fmt(met)}.",
    ]
    headline["emptypoll"] = {
        "worker_ms": worker.get("mean_ms"),
        "task_ms": layers.get("task", {}).get("mean_ms"),
        "target_met": met,
    }
    return lines


def section_deletions(d: dict[str, Any], headline: dict[str, Any]) -> list[str]:
    lines = [
        "## What deletion safety costs (`bench/deletions.py`, issue 13)",
        "",
        "Confirmation GETs (`GET /v2/bookings/{id}`) per 100 real deletions, counted by the "
        "sandbox (the real poller, client and Redis, rate limit lifted):",
        "",
    ]
    rows = [
        [
            c["case"],
            fmt(c["bookings"]),
            fmt(c["sweeps"]),
            fmt(c["deleted"]),
            fmt(c["announced"]),
            fmt(c["confirmation_gets"]),
            fmt(c.get("gets_per_100_deletions"), 0),
        ]
        for c in d["cost"]
    ]
    lines += table(
        ["case", "bookings", "sweeps", "deleted", "announced", "GETs", "GETs per 100 deletions"],
        rows,
    )
    lat = d["latency"]
    s = lat["latency_s"]
    lines += [
        "",
        f"Deletion-detection latency with confirmation on, B = {lat['rate_limit']}/min, "
        f"{lat['orgs']} orgs {TIMES} {lat['bookings_per_org']} bookings, "
        f"`ETBRIDGE_SWEEP_INTERVAL={lat['sweep_interval']:g}` (real worker and beat): "
        f"{lat['deletions']} deletions, mean {fmt(s.get('mean'), 1)} s, p50 "
        f"{fmt(s.get('p50'), 1)} s, p95 {fmt(s.get('p95'), 1)} s, max {fmt(s.get('max'), 1)} s; "
        f"{lat['confirmation_gets']} confirmation GETs, {lat['served_429']} {TIMES} 429.",
    ]
    headline["deletions"] = {
        "gets_per_100_deletions": {c["case"]: c.get("gets_per_100_deletions") for c in d["cost"]},
        "latency_s": s,
    }
    return lines


def section_latency(d: dict[str, Any], headline: dict[str, Any], plots: list[str]) -> list[str]:
    cfg = d["config"]
    lines = [
        "## Detection latency under the budget (`bench/latency.py`, issues 7 and 12)",
        "",
        f"Groups of O orgs and a churn shape (uniform, or {cfg['hot_orgs']}), "
        f"{cfg['churn_per_org_per_s']:g} changes/s per org (kinds {', '.join(cfg['kinds'])}), "
        f"{cfg['bookings_per_org']} bookings per org. Each group's three policies ran at the same "
        "time, each against its own sandbox and Redis database, fed identical mutations: "
        f"{cfg['warmup_s']:g} s warm-up, {cfg['window_s']:g} s of measured mutations, then a "
        "drain. planner = real `celery worker` + `celery beat` (`ETBRIDGE_POLL_INTERVAL=1`); "
        "round-robin = a driver calling etbridge's `Poller.poll` for one org after the other "
        "every 61·O/B s per org (B requests per the budget's 61 s window); fixed-60s = the same "
        f"driver, every org every 60 s. Latency = outbox commit {MINUS} mutation time (s); a "
        "change still undetected when polling stopped counts at its lower bound. T = 60·O/B. "
        "util = requests a second over the measured span, over B/60 (the budget's 61 s "
        "window caps it at 0.98); delay = dispatch delay "
        "(deadline to poll start) p99; analytic = the allocation's expected mean with the true "
        "rates over round-robin's.",
        "",
    ]
    rows = []
    headline["latency"] = {}
    for name, per in d["latency"].items():
        group = d["groups"][name]
        t = d["targets"][name]
        rr_mean = per["round-robin"]["latency_s"].get("mean")
        for policy in ("planner", "round-robin", "fixed-60s"):
            r = per[policy]
            s = r["latency_s"]
            delay = r.get("dispatch_delay_s", {}).get("p99")
            rows.append(
                [
                    name,
                    fmt(group["limit"]),
                    policy,
                    fmt(s.get("n")),
                    fmt(s.get("mean"), 2),
                    fmt(s.get("p50"), 2),
                    fmt(s.get("p99"), 2),
                    fmt(r["hot_orgs"].get("mean"), 2),
                    fmt(r["quiet_orgs"].get("mean"), 2),
                    f"{fmt(r.get('polls_per_hot_org'), 0)} / "
                    f"{fmt(r.get('polls_per_quiet_org'), 0)}",
                    fmt(r.get("utilisation"), 2),
                    fmt(delay, 2) if policy == "planner" else NA,
                    fmt(r["undetected"]),
                    fmt(r["served_429"]),
                    ratio(s.get("mean"), rr_mean, 2),
                ]
            )
        headline["latency"][name] = {
            "planner": per["planner"]["latency_s"],
            "round_robin": per["round-robin"]["latency_s"],
            "fixed_60s": per["fixed-60s"]["latency_s"],
            "T_s": t["T_s"],
            "analytic_over_round_robin": t["analytic"]["over_round_robin"],
        }
    lines += table(
        [
            "group",
            "B/min",
            "policy",
            "n",
            "mean",
            "p50",
            "p99",
            "hot-org mean",
            "quiet-org mean",
            "polls per hot / quiet org",
            "util",
            "delay p99",
            "undetected",
            "429s",
            "mean / round-robin",
        ],
        rows,
    )
    lines += ["", "Targets (issue 12):", ""]
    trows = []
    for name, t in d["targets"].items():
        met = [f"{k[:-4]}: {fmt(v)}" for k, v in t.items() if k.endswith("_met")]
        trows.append(
            [
                name,
                fmt(t["T_s"], 1),
                fmt(t.get("p99_max_s"), 1),
                f"{fmt(t['planner_mean_over_round_robin'], 3)} "
                f"(analytic {fmt(t['analytic']['over_round_robin'], 3)})",
                "; ".join(met),
            ]
        )
    lines += table(["group", "T (s)", "p99 target (s)", "planner mean / RR", "targets"], trows)
    dele = d.get("deletions")
    if dele:
        lines += [
            "",
            f"Deletions under a tight budget: B = {dele['limit_per_minute']}/min, "
            f"{dele['orgs']} orgs {TIMES} {dele['bookings_per_org']} bookings, one deletion "
            f"every 10 s plus updates, `ETBRIDGE_SWEEP_INTERVAL={dele['sweep_interval_asked_s']}` "
            f"(unaffordable: the allocation trades sweeps against polls). Allocated sweep cycle "
            f"{fmt(dele['allocated_sweep_cycle_s'], 1)} s, poll interval "
            f"{fmt(dele['allocated_poll_interval_s'], 1)} s; deleted events: mean "
            f"{fmt(dele['deletions_s'].get('mean'), 1)} s, p99 "
            f"{fmt(dele['deletions_s'].get('p99'), 1)} s, max "
            f"{fmt(dele['deletions_s'].get('max'), 1)} s ({dele['undetected_deletions']} "
            f"undetected); creates/updates p99 {fmt(dele['changes_s'].get('p99'), 1)} s; "
            f"{dele['served_429']} {TIMES} 429. Targets: "
            + "; ".join(f"{k[:-4]}: {fmt(v)}" for k, v in dele["targets"].items())
            + ".",
        ]
    cpu = d.get("planning_cpu")
    if cpu:
        lines += [
            "",
            f"Planning CPU, {cpu['units']:,} orgs (pure functions): allocation "
            f"{fmt(cpu['allocation_ms'], 0)} ms (reused for 10 s), dispatch "
            f"{fmt(cpu['dispatch_ms'], 1)} ms a tick: {fmt(cpu['ms_per_tick'], 1)} ms per 1 s "
            f"tick (target {LE} 20 ms: {fmt(cpu['target_le_20ms_met'])}).",
        ]
    if "latency_cdf.png" in plots:
        lines += ["", "![detection latency CDF](latency_cdf.png)"]
    scaling = d.get("scaling") or []
    if scaling:
        lines += [
            "",
            f"Scaling: B = {cfg['scaling_limit']:,}/min, {cfg['scaling_orgs']} orgs, sandbox "
            f"churn {cfg['scaling_churn']:g}/s, `ETBRIDGE_POLL_INTERVAL=1`, one beat; worker "
            f"processes (`--concurrency 1`) added step by step, {cfg['scaling_seconds']:g} s "
            "measured per step. CPU columns: cores in use.",
            "",
        ]
        srows = []
        one = scaling[0]["orgs_polled_per_s"]
        for row in scaling:
            c = row["cpu_cores_used"]
            lat = row.get("detection_latency_s", {})
            srows.append(
                [
                    fmt(row["workers"]),
                    fmt(row["orgs_polled_per_s"], 1),
                    ratio(row["orgs_polled_per_s"], one, 2),
                    fmt(row["events_per_s"], 1),
                    f"{row['budget_used']:.0%}",
                    f"{row['machine_cpu_busy']:.0%}",
                    fmt(c["workers"], 2),
                    fmt(c["sandbox"], 2),
                    fmt(c["redis"], 2),
                    fmt(c.get("other"), 2),
                    fmt(row["poll_queue_length_end"]),
                    fmt(lat.get("p50"), 2),
                    fmt(lat.get("p99"), 2),
                ]
            )
        lines += table(
            [
                "workers",
                "orgs polled/s",
                "vs 1 worker",
                "events/s",
                "budget used",
                "machine CPU",
                "workers (cores)",
                "sandbox",
                "redis",
                "other processes",
                "poll queue",
                "latency p50 (s)",
                "p99",
            ],
            srows,
        )
        saturated = next((r for r in scaling if r["machine_cpu_busy"] >= 0.9), None)
        per_poll = [
            f"{r['cpu_cores_used']['workers'] / max(1e-9, r['orgs_polled_per_s']) * 1000:.1f}"
            for r in scaling
        ]
        lines += [
            "",
            f"Worker CPU per poll: {' / '.join(per_poll)} ms (1 / 2 / 4 workers). One worker "
            "process with `--concurrency 1` runs one task at a time and waits for the broker "
            "between tasks, so it leaves most of a core idle; more processes overlap those "
            "waits. "
            + (
                f"At {saturated['workers']} workers the machine's 2 cores are "
                f"{saturated['machine_cpu_busy']:.0%} busy (workers, sandbox, Redis and "
                "other jobs together): that is where scaling stops on this machine, well "
                "below the budget (the `budget used` column)."
                if saturated
                else "The machine's CPU never saturated in this run."
            )
            + " Events/s follow the churn (150/s, of which create + update ≈ 70 % emit) as "
            "long as every org is polled every few seconds; more polls show as lower "
            "detection latency, not more events.",
        ]
        headline["scaling"] = [
            {
                k: row[k]
                for k in ("workers", "orgs_polled_per_s", "events_per_s", "machine_cpu_busy")
            }
            for row in scaling
        ]
    return lines


def section_token(d: dict[str, Any], headline: dict[str, Any], plots: list[str]) -> list[str]:
    ours, base, only401 = d["etbridge"], d["baseline"], d["baseline_401"]
    c = d["config"]
    rows = []
    for label, key in (
        ("token requests", "token_requests"),
        ("ideal ⌈duration / lifetime⌉", "ideal_token_requests"),
        ("401s served", "unauthorized_401"),
        ("requests with an expired token", "expired_token_requests"),
        ("API calls answered 200", "ok"),
    ):
        rows.append(
            [
                label,
                fmt(ours[key]),
                fmt(base[key]),
                fmt(only401[key]),
                ratio(base[key], ours[key]) if key == "token_requests" else "",
            ]
        )
    headline["token_fleet"] = {
        "etbridge_token_requests": ours["token_requests"],
        "baseline_token_requests": base["token_requests"],
        "ratio": d.get("baseline_over_etbridge"),
    }
    lines = [
        "## One token for the fleet (`bench/token_fleet.py`)",
        "",
        f"{c['processes']} processes {TIMES} {c['calls_per_process']} API calls over "
        f"{c['phase_duration_s']:g} s, token lifetime {c['token_lifetime_s']} s. etbridge = "
        "the shared Redis token cache; baseline = a token per process renewed before "
        "expiry (authlib-style); on-401-only = renewed only after a 401 "
        "(requests-oauthlib-style).",
        "",
        *table(["", "etbridge", "per process", "on 401 only", "per process / etbridge"], rows),
    ]
    if "token_requests.png" in plots:
        lines += ["", "![token requests over time](token_requests.png)"]
    return lines


def section_rate(d: dict[str, Any], headline: dict[str, Any], plots: list[str]) -> list[str]:
    fleets = d["fleets"]
    ours = fleets["etbridge"]
    rows = []
    for name in ("etbridge", "per-worker", "none"):
        f = fleets[name]
        rows.append(
            [
                name,
                fmt(f["served_429_total"]),
                fmt(f["requests_per_window_max"]),
                fmt(f["requests_per_window_mean"], 1),
                f"{f['utilisation']:.1%}",
                fmt(f["windows_over_limit"]),
                ratio(f["ok_per_window_mean"], ours["ok_per_window_mean"], 3),
            ]
        )
    headline["rate_budget"] = {
        name: {
            "served_429": fleets[name]["served_429_total"],
            "utilisation": round(fleets[name]["utilisation"], 3),
        }
        for name in fleets
    }
    lines = [
        "## The fleet's shared rate budget (`bench/rate_budget.py`)",
        "",
        f"{d['processes_per_fleet']} processes per fleet, API limit L = "
        f"{d['limit_per_minute']}/min, {d['windows']} whole windows, fleets side by side. "
        "etbridge = one Redis budget; per-worker = each process spaces its calls at L/16 "
        "(Celery's `rate_limit`); none = no limit, 429s honoured.",
        "",
        *table(
            [
                "fleet",
                "429s",
                "max requests/window",
                "mean requests/window",
                "utilisation",
                "windows over L",
                "ok vs etbridge",
            ],
            rows,
        ),
    ]
    if "rate_budget_windows.png" in plots:
        lines += ["", "![requests per window](rate_budget_windows.png)"]
    return lines


def section_delivery(d: dict[str, Any], headline: dict[str, Any]) -> list[str]:
    sb, hb = d["stream_baseline"], d["webhook_baseline"]
    rows = []
    for row in d["stream"]:
        rows.append(
            [
                f"relay → Redis stream, {processes(row['processes'])}",
                fmt(row["events_per_s"]),
                "XRANGE + pipelined XADD, 1 process",
                fmt(sb["events_per_s"]),
                ratio(row["events_per_s"], sb["events_per_s"], 2),
            ]
        )
    for row in d["webhook"]:
        rows.append(
            [
                f"relay → signed webhook, {processes(row['processes'])}",
                fmt(row["events_per_s"]),
                "bare unsigned POSTs, 1 process",
                fmt(hb["events_per_s"]),
                ratio(row["events_per_s"], hb["events_per_s"], 2),
            ]
        )
    lat_rows = [
        [
            f"relay, {processes(row['processes'])}, {row['rate_per_s']:g} events/s",
            fmt(row["p50_ms"], 2),
            fmt(row["p99_ms"], 2),
            fmt(hb["p99_ms"], 2),
        ]
        for row in d["latency"]
    ]
    headline["delivery"] = {
        "stream_events_per_s_1proc": d["stream"][0]["events_per_s"],
        "webhook_p99_ms": max(r["p99_ms"] for r in d["latency"]),
    }
    return [
        "## Delivery (`bench/delivery.py`)",
        "",
        *table(["etbridge", "events/s", "baseline", "events/s", "etbridge / baseline"], rows),
        "",
        *table(
            ["commit → webhook receipt", "p50 ms", "p99 ms", "bare POST p99 ms"],
            lat_rows,
        ),
    ]


def section_sandbox(d: dict[str, Any], headline: dict[str, Any]) -> list[str]:
    lat = d["latency_ms"]
    headline["sandbox_throughput"] = {"pages_per_s": d["requests_per_s"]}
    return [
        "## The sandbox itself (`bench/sandbox_throughput.py`)",
        "",
        "The harness, not etbridge: how fast the local Event Temple serves, so that it is "
        "never the bottleneck of the other figures.",
        "",
        *table(
            ["clients", "pages of 100/s", "MB/s", "p50 / p95 / p99 ms", "server CPU ms/page"],
            [
                [
                    fmt(d["clients"]),
                    fmt(d["requests_per_s"], 0),
                    fmt(d["mb_per_s"], 1),
                    f"{lat['p50']} / {lat['p95']} / {lat['p99']}",
                    fmt(d.get("server_cpu_ms_per_page"), 3),
                ]
            ],
        ),
    ]


# --- plots ------------------------------------------------------------------------------


# One figure after another.
def plot_all(results: dict[str, Any]) -> list[str]:  # noqa: C901, PLR0912, PLR0915
    """Write the PNGs whose data is there; return their file names."""
    # Only the plots need matplotlib, and the backend must be chosen before pyplot loads.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    made: list[str] = []
    colors = {"planner": "#1b7837", "round-robin": "#2166ac", "fixed-60s": "#b2182b"}

    lat = results.get("latency")
    if lat and lat.get("latency"):
        per_o = lat["latency"]
        cols = min(3, len(per_o))
        nrows = -(-len(per_o) // cols)
        fig, grid = plt.subplots(
            nrows, cols, figsize=(6.2 * cols, 4.4 * nrows), squeeze=False, sharey=True
        )
        axes = [[ax for row in grid for ax in row]]
        for ax in axes[0][len(per_o) :]:
            ax.axis("off")
        for ax, (orgs, per) in zip(axes[0], per_o.items(), strict=False):
            t = lat["targets"][orgs]
            bound = {"cycle_bound_s": t["T_s"], "target_p99_s": t["p99_max_s"]}
            for policy in ("planner", "round-robin", "fixed-60s"):
                values = sorted(per[policy]["latencies_s"])
                if not values:
                    continue
                ys = [(i + 1) / len(values) for i in range(len(values))]
                s = per[policy]["latency_s"]
                ax.step(
                    values,
                    ys,
                    where="post",
                    color=colors[policy],
                    linewidth=2,
                    label=f"{policy} (mean {s['mean']:.1f} s, p99 {s['p99']:.1f} s)",
                )
            ax.axvline(
                bound["cycle_bound_s"],
                color="grey",
                linestyle="--",
                linewidth=1,
            )
            ax.text(
                bound["cycle_bound_s"],
                0.03,
                f" T = 60·O/B = {bound['cycle_bound_s']:g} s",
                color="grey",
                fontsize=8,
            )
            ax.axvline(bound["target_p99_s"], color="black", linestyle=":", linewidth=1)
            ax.text(
                bound["target_p99_s"],
                0.10,
                f" target p99 {bound['target_p99_s']:g} s",
                fontsize=8,
            )
            ax.set_xscale("log")
            longest = max((max(per[p]["latencies_s"], default=0.0) for p in per), default=0.0)
            ax.set_xlim(0.1, 200 if longest > 90 else 100)
            ticks = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.set_ylim(0, 1.01)
            ax.set_title(f"O = {orgs}, B = {lat['groups'][orgs]['limit']}/min")
            ax.set_xlabel("detection latency (s, log scale)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="upper left", fontsize=8)
        grid[0][0].set_ylabel("fraction of changes detected")
        fig.suptitle("Detection latency: etbridge's planner vs round-robin vs fixed 60 s")
        fig.tight_layout()
        fig.savefig(RESULTS_DIR / "latency_cdf.png", dpi=110)
        plt.close(fig)
        made.append("latency_cdf.png")

    rate = results.get("rate_budget")
    if rate and rate.get("fleets"):
        limit = rate["limit_per_minute"]
        fleets = rate["fleets"]
        names = [n for n in ("etbridge", "per-worker", "none") if n in fleets]
        fcolors = {"etbridge": "#1b7837", "per-worker": "#2166ac", "none": "#b2182b"}
        fig, (ax1, ax2) = plt.subplots(
            2, 1, figsize=(9, 7), gridspec_kw={"height_ratios": [1, 1.2]}
        )
        windows = sorted({int(w) for n in names for w in fleets[n]["measured_windows"]})
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            counts = [fleets[name]["requests_per_window"].get(str(w), 0) for w in windows]
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(windows))]
            bars = ax1.bar(xs, counts, width=width, color=fcolors[name], label=name)
            ax1.bar_label(bars, fontsize=8, padding=1)
        ax1.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"limit L = {limit}")
        ax1.set_xticks(range(len(windows)))
        ax1.set_xticklabels([f"window {i + 1}" for i in range(len(windows))])
        ax1.set_title("Requests per fixed API minute (whole windows of the run)")
        ax1.legend(loc="upper center", fontsize=8, ncol=4)
        ax1.set_ylim(limit * 0.8, limit * 1.13)
        ax1.set_ylabel("requests the API counted\n(y axis starts at 80% of L)")
        # Below: requests sent so far in the current API minute, per 5 s step. A fleet
        # that respects the limit never crosses the line; one that bursts hits it early
        # and then collects 429s.
        t0 = min(windows) if windows else 0
        styles = {"etbridge": "-", "per-worker": "--", "none": "-"}
        for name in names:
            ok = {int(k): v for k, v in fleets[name]["ok_per_5s"].items()}
            lim = {int(k): v for k, v in fleets[name].get("limited_per_5s", {}).items()}
            xs = []
            ys = []
            for w in windows:
                total = 0
                xs.append(w - t0)
                ys.append(0)
                for b in range(w, w + 60, 5):
                    total += ok.get(b, 0) + lim.get(b, 0)
                    xs.append(b + 5 - t0)
                    ys.append(total)
            ax2.plot(
                xs,
                ys,
                linestyle=styles[name],
                color=fcolors[name],
                linewidth=2,
                label=f"{name} ({fleets[name]['served_429_total']} x 429)",
            )
        ax2.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"limit L = {limit}")
        for w in windows:
            ax2.axvline(w - t0, color="grey", linewidth=0.6, alpha=0.6)
        ax2.set_xlabel("seconds since the first whole window (grey: API minute boundaries)")
        ax2.set_ylabel("requests so far in this minute\n(answered + 429)")
        ax2.set_title("How each fleet spends its minute")
        ax2.legend(fontsize=8, loc="lower right")
        ax2.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS_DIR / "rate_budget_windows.png", dpi=110)
        plt.close(fig)
        made.append("rate_budget_windows.png")

    token = results.get("token_fleet")
    if token and "etbridge" in token:
        fig, ax = plt.subplots(figsize=(8.5, 4.4))
        tcolors = {"etbridge": "#1b7837", "baseline": "#2166ac", "baseline_401": "#b2182b"}
        labels = {
            "etbridge": "etbridge: one token in Redis",
            "baseline": "a token per process, renewed before expiry",
            "baseline_401": "a token per process, renewed after a 401",
        }
        duration = 0.0
        for name in ("baseline", "baseline_401", "etbridge"):
            if name not in token:
                continue
            times = sorted(max(0.0, t) for t in token[name]["token_request_times_s"])
            duration = max(duration, token[name]["duration_s"])
            xs = [0.0, *times, token[name]["duration_s"]]
            ys = [0, *range(1, len(times) + 1), len(times)]
            ax.step(
                xs,
                ys,
                where="post",
                color=tcolors[name],
                linewidth=2,
                label=f"{labels[name]} ({len(times)})",
            )
        ttl = token["config"]["token_lifetime_s"]
        k = 1
        while k * ttl < duration:
            ax.axvline(k * ttl, color="grey", linewidth=0.6, alpha=0.5)
            k += 1
        ax.set_xlabel(f"seconds (grey: multiples of the {ttl} s token lifetime)")
        ax.set_ylabel("token requests so far")
        ax.set_title(f"Token requests of a {token['config']['processes']}-process fleet over time")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS_DIR / "token_requests.png", dpi=110)
        plt.close(fig)
        made.append("token_requests.png")
    return made


# --- the report ---------------------------------------------------------------------------


def collect_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target a benchmark checks, by benchmark: name -> met."""
    out: dict[str, dict[str, Any]] = {}
    if results.get("diff"):
        t = results["diff"]["targets"]
        out["diff"] = {k: v for k, v in t.items() if k.endswith("_met")}
    if results.get("latency"):
        out["latency"] = {
            f"O={o}: {k}": v
            for o, t in results["latency"]["targets"].items()
            for k, v in t.items()
            if k.endswith("_met")
        }
        dele = results["latency"].get("deletions") or {}
        out["latency"].update({f"deletions: {k}": v for k, v in dele.get("targets", {}).items()})
        cpu = results["latency"].get("planning_cpu") or {}
        if cpu:
            out["latency"]["planning CPU <= 20 ms per tick"] = cpu["target_le_20ms_met"]
    if results.get("emptypoll"):
        ep = results["emptypoll"]
        worker = ep.get("layers", {}).get("worker", {})
        if worker.get("mean_ms") is not None:
            out["emptypoll"] = {
                f"worker CPU per empty poll <= {ep['target_ms']:g} ms": worker["mean_ms"]
                <= ep["target_ms"]
            }
    if results.get("token_fleet"):
        out["token_fleet"] = dict(results["token_fleet"].get("targets_met", {}))
    if results.get("rate_budget"):
        rate = results["rate_budget"]
        out["rate_budget"] = {"no_429_and_utilisation_ge_0.95": rate["target_met"]}
    if results.get("delivery"):
        t = results["delivery"]["targets"]
        out["delivery"] = {k: v for k, v in t.items() if k.endswith("_met")}
    return out


def write_report(runs: dict[str, Any], quick: bool) -> int:
    results: dict[str, Any] = {name: load(name) for name in ORDER}
    plots = plot_all(results)
    machine = machine_facts()
    headline: dict[str, Any] = {}
    sections: list[list[str]] = []
    builders = {
        "diff": lambda d: section_diff(d, headline),
        "latency": lambda d: section_latency(d, headline, plots),
        "deletions": lambda d: section_deletions(d, headline),
        "token_fleet": lambda d: section_token(d, headline, plots),
        "rate_budget": lambda d: section_rate(d, headline, plots),
        "delivery": lambda d: section_delivery(d, headline),
        "sandbox_throughput": lambda d: section_sandbox(d, headline),
        "emptypoll": lambda d: section_emptypoll(d, headline),
    }
    for name in (
        "latency",
        "emptypoll",
        "deletions",
        "diff",
        "token_fleet",
        "rate_budget",
        "delivery",
        "sandbox_throughput",
    ):
        data = results.get(name)
        if data is None:
            sections.append([f"## {name}", "", "No results: the benchmark did not run or failed."])
            continue
        try:
            sections.append(builders[name](data))
        except (KeyError, TypeError, ValueError) as exc:
            sections.append(
                [f"## {name}", "", f"Results unreadable ({type(exc).__name__}: {exc})."]
            )
    targets = collect_targets(results)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# etbridge benchmark report",
        "",
        f"Generated {when} by `python bench/run_all.py{' --quick' if quick else ''}`; every "
        "baseline was measured in the same run as etbridge, on the same machine.",
        "",
        *table(
            ["machine", ""],
            [
                ["CPU cores", fmt(machine["cpus"])],
                ["CPU", machine["cpu_model"]],
                ["Python", machine["python"]],
                ["Redis", machine["redis"]],
                ["platform", machine["platform"]],
                [
                    "etbridge code measured",
                    ", ".join(sorted({r.get("code", "not recorded") for r in runs.values()}))
                    if runs
                    else code_version(),
                ],
                ["date", when],
            ],
        ),
        "",
        "## Targets",
        "",
        *table(
            ["benchmark", "target", "result"],
            [[b, k, fmt(v)] for b, t in targets.items() for k, v in t.items()],
        ),
        "",
    ]
    for block in sections:
        lines += [*block, ""]
    if runs:
        lines += [
            "## Runs",
            "",
            *table(
                ["benchmark", "command", "exit", "seconds"],
                [
                    [name, f"`{r['command']}`", fmt(r["exit_code"]), fmt(r["seconds"], 0)]
                    for name, r in runs.items()
                ],
            ),
            "",
            f"Total: {sum(r['seconds'] for r in runs.values()) / 60:.1f} min.",
            "",
        ]
    (RESULTS_DIR / "REPORT.md").write_text("\n".join(lines))
    document = {
        "benchmark": "run_all",
        "quick": quick,
        "generated_at": when,
        "machine": machine,
        "runs": runs,
        "targets": targets,
        "headline": headline,
        "plots": plots,
    }
    write_results("report", document)
    print(f"\nwrote {RESULTS_DIR / 'REPORT.md'}, report.json and {', '.join(plots) or 'no plots'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's smoke size")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=ORDER, default=[], help="do not run these")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing; report from the JSON files"
    )
    args = parser.parse_args(argv)
    sizes = QUICK_ARGS if args.quick else FULL_ARGS
    runs: dict[str, Any] = {}
    if not args.report_only:
        names = [n for n in ORDER if (not args.only or n in args.only) and n not in args.skip]
        started = time.monotonic()
        for name in names:
            runs[name] = run_one(name, sizes[name])
        print(f"\nall benchmarks: {(time.monotonic() - started) / 60:.1f} min", flush=True)
    else:
        previous = load("report")
        runs = dict((previous or {}).get("runs", {}))
    write_report(runs, args.quick)
    failed = [n for n, r in runs.items() if r["exit_code"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
