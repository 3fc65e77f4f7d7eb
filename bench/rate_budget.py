"""A fleet sharing Event Temple's rate limit: etbridge's budget vs per-worker limits vs none.

16 processes poll the sandbox (``GET /v2/bookings``, one org each, 25 per page)
as fast as they are allowed, against an API limit of L requests per fixed
minute, for N whole windows. Three fleets run side by side in the same run,
each against its own sandbox (its own limit counter) and at the same time:

* ``etbridge``: every process takes a slot from one
  :class:`etbridge.ratelimit.RequestBudget` (limit L) in a private Redis;
* ``per-worker``: Celery's ``rate_limit`` model: every process spaces its own
  calls at L/16 per minute (a token bucket of capacity 1, as kombu's), with
  random start phases, as workers started at different times have;
* ``none``: no limit at all; like the others, a 429 makes the process wait
  its ``Retry-After`` (a Celery ``retry(countdown=...)``).

Reported per fleet: 429s the API served, requests per window the API counted
(max, mean), successful requests per window, and utilisation = mean successful
requests per window / L, over the windows that lie wholly inside the run.
Writes ``bench/results/rate_budget.json`` with per-window and per-5 s counts
for a plot. ``--busy K`` leaves only K processes with work (the rest idle, as
workers without poll tasks are), which is where per-worker limits waste the
budget.

    python bench/rate_budget.py            # L = 600/min, 3 windows (~5 min)
    python bench/rate_budget.py --quick    # L = 300/min, 2 windows (~4 min)

The fleets start 1.5 s before an API minute begins (``--phase``), the worst
case for a limiter whose grants come in bursts: a first burst straddles the
boundary. A plain sliding-window log (no pacing) measured 0.667 utilisation
there (250 / 350 / 600 requests in three windows at L = 600).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path: tests.support)
import redis
import requests
import requests.auth

from etbridge.client import EventTempleClient
from etbridge.errors import RateLimited, RetriableError
from etbridge.ratelimit import DEFAULT_MARGIN, RequestBudget
from etbridge.redisserver import RedisServer
from etbridge.settings import Settings
from tests.support.sandbox import Sandbox
from tests.support.stack import FixedToken

RESULTS = Path(__file__).resolve().parent / "results" / "rate_budget.json"
MODES = ("etbridge", "per-worker", "none")
WINDOW = 60
ORGS = 4
ctx = mp.get_context("fork")


def worker(  # noqa: PLR0913  (a Process target: its args are positional)
    mode: str,
    index: int,
    procs: int,
    api_url: str,
    client_id: str,
    token: str,
    redis_url: str,
    limit: int,
    busy: int,
    ready: Any,
    go: Any,
    stop: Any,
    out: Any,
) -> None:
    """Poll as fast as the mode allows; report per-second counts of ok / 429 / errors."""
    # The baselines' give-ups are the expected outcome here, not news.
    logging.getLogger("etbridge").setLevel(logging.ERROR)
    settings = Settings(
        client_id=client_id, client_secret="unused", api_url=api_url, rate_limit=limit
    )
    r = redis.Redis.from_url(redis_url) if mode == "etbridge" else None
    budget = RequestBudget.for_settings(settings, r) if r is not None else None
    ok: Counter[int] = Counter()
    limited: Counter[int] = Counter()
    errors: Counter[int] = Counter()

    def tally(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        # Counted by send time (the sandbox counts at arrival, milliseconds later),
        # so a request near a boundary lands in the same window on both sides.
        sent = int(time.time() - resp.elapsed.total_seconds())
        if resp.status_code == 429:
            limited[sent] += 1
        elif resp.ok:
            ok[sent] += 1
        else:
            errors[sent] += 1
        return resp

    session = requests.Session()
    session.hooks["response"].append(tally)
    client = EventTempleClient(
        settings,
        auth=FixedToken(token),
        budget=budget,
        session=session,
        # Baselines hand every 429 back at once, as a task with autoretry would.
        budget_wait=5.0 if budget else 0.0,
        backoff_cap=1.0,
    )
    org = str(1001 + index % ORGS)
    spacing = WINDOW / (limit / procs) if mode == "per-worker" else 0.0
    ready.set()
    go.wait()
    if index >= busy:
        # A worker without poll tasks: under per-worker limits its share is lost.
        stop.wait()
        out.put((mode, {}, {}, {}))
        return
    # Workers started at different times: the per-worker buckets have random phases.
    next_at = time.monotonic() + random.uniform(0, spacing)
    while not stop.is_set():
        if spacing:
            delay = next_at - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            next_at = max(next_at, time.monotonic() - spacing) + spacing
        try:
            client.get_document(org, "/v2/bookings", {"page[size]": "25"})
        except RateLimited as exc:
            stop.wait(exc.retry_after if exc.retry_after is not None else 1.0)
        except RetriableError:
            pass  # counted by the hook; the next loop tries again
    session.close()
    if r is not None:
        r.close()
    out.put((mode, dict(ok), dict(limited), dict(errors)))


def _buckets(counts: Counter[int], size: int) -> dict[str, int]:
    series: Counter[int] = Counter()
    for second, n in counts.items():
        series[second // size * size] += n
    return {str(k): v for k, v in sorted(series.items())}


def run(
    modes: tuple[str, ...],
    limit: int,
    windows: int,
    procs: int,
    busy: int,
    phase: float | None,
    redis_url: str,
) -> dict[str, Any]:
    """Run the fleets of ``modes`` side by side; their figures keyed by mode."""
    sandboxes = {
        mode: Sandbox.start(
            orgs=ORGS,
            bookings=50,
            rate_limit=limit,
            client_id=f"bench-{mode}",
            client_secret=f"bench-{mode}-secret",
        )
        for mode in modes
    }
    try:
        go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        readies = []
        processes = []
        for mode in modes:
            sb = sandboxes[mode]
            token = sb.token()
            for index in range(procs):
                ready = ctx.Event()
                readies.append(ready)
                processes.append(
                    ctx.Process(
                        target=worker,
                        args=(
                            mode,
                            index,
                            procs,
                            sb.url,
                            sb.client_id,
                            token,
                            redis_url,
                            limit,
                            busy,
                            ready,
                            go,
                            stop,
                            out,
                        ),
                        daemon=True,
                    )
                )
        for proc in processes:
            proc.start()
        for ready in readies:
            if not ready.wait(120):
                raise RuntimeError("a fleet process did not start")
        if phase is not None and phase >= 0:
            # Start the fleets at a chosen point of the API's minute (worst case:
            # just before a boundary, so a first burst straddles it).
            now = time.time()
            time.sleep((phase - now % WINDOW) % WINDOW)
        started = time.time()
        go.set()
        first = math.ceil(started / WINDOW) * WINDOW
        end = first + windows * WINDOW
        measured = [first + k * WINDOW for k in range(windows)]
        print(
            f"  {len(modes)} fleet(s) x {procs} processes running; measuring "
            f"{windows} window(s) from {time.strftime('%H:%M:%S', time.localtime(first))}, "
            f"done at {time.strftime('%H:%M:%S', time.localtime(end))}",
            flush=True,
        )
        while time.time() < end + 0.5:
            time.sleep(min(5.0, max(0.05, end + 0.5 - time.time())))
        stop.set()
        ok: dict[str, Counter[int]] = {m: Counter() for m in modes}
        limited: dict[str, Counter[int]] = {m: Counter() for m in modes}
        errors: dict[str, Counter[int]] = {m: Counter() for m in modes}
        for _ in processes:
            mode, o, lim, err = out.get(timeout=120)
            ok[mode].update(o)
            limited[mode].update(lim)
            errors[mode].update(err)
        for proc in processes:
            proc.join(30)
        results: dict[str, Any] = {}
        for mode in modes:
            counters = sandboxes[mode].counters()
            per_window = {int(k): v for k, v in counters["requests_per_window"].items()}
            ok_window = {int(k): v for k, v in _buckets(ok[mode], WINDOW).items()}
            lim_window = {int(k): v for k, v in _buckets(limited[mode], WINDOW).items()}
            requests_m = [per_window.get(w, 0) for w in measured]
            ok_m = [ok_window.get(w, 0) for w in measured]
            results[mode] = {
                "served_429_total": counters["served_429"],
                "served_429_in_measured_windows": sum(lim_window.get(w, 0) for w in measured),
                "errors": sum(errors[mode].values()),
                "requests_per_window_max": max(requests_m),
                "requests_per_window_mean": sum(requests_m) / len(requests_m),
                "ok_per_window_mean": sum(ok_m) / len(ok_m),
                "utilisation": sum(ok_m) / len(ok_m) / limit,
                "windows_over_limit": sum(n > limit for n in requests_m),
                "measured_windows": measured,
                "requests_per_window": {str(k): v for k, v in sorted(per_window.items())},
                "ok_per_window": {str(k): v for k, v in sorted(ok_window.items())},
                "ok_per_5s": _buckets(ok[mode], 5),
                "limited_per_5s": _buckets(limited[mode], 5),
            }
        return results
    finally:
        for sb in sandboxes.values():
            stopping = time.monotonic()
            sb.stop()
            print(f"  sandbox stopped in {time.monotonic() - stopping:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L=300, 2 windows")
    parser.add_argument("--limit", type=int, help="L: API requests per minute")
    parser.add_argument("--windows", type=int, help="whole windows to measure (>= 1)")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument(
        "--busy",
        type=int,
        help="processes that have poll work (default: all); the rest sit idle",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run the fleets one after another instead of side by side (3x longer)",
    )
    parser.add_argument(
        "--phase",
        type=float,
        default=58.5,
        help="start the fleets this many seconds into an API minute; the default, 1.5 s "
        "before a boundary, is the worst case for a bursty limiter; negative: start at once",
    )
    parser.add_argument(
        "--fleets", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    limit = args.limit or (300 if args.quick else 600)
    windows = args.windows or (2 if args.quick else 3)
    procs = args.processes
    modes = tuple(m for m in MODES if m in args.fleets.split(","))
    busy = min(args.busy or procs, procs)
    print(
        f"rate budget: {procs} processes per fleet ({busy} with work), API limit L={limit}/min, "
        f"{windows} whole windows, budget margin {DEFAULT_MARGIN:.1f}s",
        flush=True,
    )
    with RedisServer() as server:
        if args.sequential:
            results: dict[str, Any] = {}
            for mode in modes:
                results.update(run((mode,), limit, windows, procs, busy, args.phase, server.url))
        else:
            results = run(modes, limit, windows, procs, busy, args.phase, server.url)

    header = (
        f"{'fleet':<11} {'429s':>6} {'429s*':>6} {'max/win':>8} {'mean/win':>9} "
        f"{'ok/win':>8} {'util':>6} {'err':>4}"
    )
    print()
    print(header)
    print("-" * len(header))
    for mode in modes:
        m = results[mode]
        print(
            f"{mode:<11} {m['served_429_total']:>6} {m['served_429_in_measured_windows']:>6} "
            f"{m['requests_per_window_max']:>8} {m['requests_per_window_mean']:>9.1f} "
            f"{m['ok_per_window_mean']:>8.1f} {m['utilisation']:>6.3f} {m['errors']:>4}"
        )
    print(
        f"(L={limit}/min; 429s: whole run, 429s*: in the measured windows; max/mean/win: "
        "requests the API counted per whole window; util = mean ok per window / L)"
    )
    ours = results.get("etbridge")
    target_met = ours is not None and ours["served_429_total"] == 0 and ours["utilisation"] >= 0.95
    print(f"target (etbridge: 0 x 429, utilisation >= 0.95): {'met' if target_met else 'MISSED'}")

    document = {
        "benchmark": "rate_budget",
        "quick": args.quick,
        "limit_per_minute": limit,
        "processes_per_fleet": procs,
        "processes_with_work": busy,
        "windows": windows,
        "side_by_side": not args.sequential,
        "start_phase_seconds": args.phase,
        "budget_margin_seconds": DEFAULT_MARGIN,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "target_met": target_met,
        "fleets": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
