"""How many 100-booking pages per second one sandbox process serves.

Starts ``python -m etbridge.sandbox`` (rate limit out of the way), then runs client
processes with keep-alive sessions that walk ``GET /v2/bookings?page[size]=100`` by
cursor over every org, again and again, for a fixed time. Clients read ``meta`` from the
tail of each body instead of decoding the whole document, so the figure is the
server's, not the JSON parser's. Prints a table and writes
``bench/results/sandbox_throughput.json``.

    .venv/bin/python bench/sandbox_throughput.py [--clients 4] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path: tests.support)
import requests

from tests.support.sandbox import Sandbox

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox_throughput.json"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
_META = re.compile(rb'"after_cursor":(null|"([^"]*)").*"has_more":(true|false)\}\}$')


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(url: str, token: str, orgs: list[str], duration: float, warmup: float, out: Any) -> None:
    """Walk every org's bookings by cursor until the time is up; report what was timed."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    pages = 0
    body_bytes = 0
    errors = 0
    started = time.monotonic()
    measure_from = started + warmup
    stop_at = measure_from + duration
    org_index = 0
    cursor: str | None = None
    while True:
        t0 = time.monotonic()
        if t0 >= stop_at:
            break
        params = {"page[size]": "100"}
        if cursor:
            params["page[after]"] = cursor
        resp = session.get(
            f"{url}/v2/bookings",
            params=params,
            headers={"X-API-ORG": orgs[org_index]},
            timeout=30,
        )
        t1 = time.monotonic()
        body = resp.content
        match = _META.search(body[-400:]) if resp.status_code == 200 else None
        if match is None:
            errors += t0 >= measure_from
            cursor = None
            continue
        if t0 >= measure_from:
            latencies.append(t1 - t0)
            pages += 1
            body_bytes += len(body)
        if match.group(3) == b"true" and match.group(2):
            cursor = match.group(2).decode()
        else:
            cursor = None
            org_index = (org_index + 1) % len(orgs)
    out.put({"pages": pages, "bytes": body_bytes, "errors": errors, "latencies": latencies})


def run(clients: int, duration: float, warmup: float, orgs: int, bookings: int) -> dict[str, Any]:
    """Start the sandbox, run the clients, stop it; return the measurements."""
    sb = Sandbox.start(
        orgs=orgs,
        bookings=bookings,
        rate_limit=1_000_000_000,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    process, url = sb.process, sb.url
    try:
        token = requests.post(
            f"{url}/oauth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            timeout=30,
        ).json()["access_token"]
        org_ids = [
            o["id"]
            for o in requests.get(
                f"{url}/v2/organizations",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()["data"]
        ]
        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue()
        procs = [
            ctx.Process(target=client, args=(url, token, org_ids, duration, warmup, out))
            for _ in range(clients)
        ]
        for proc in procs:
            proc.start()
        time.sleep(warmup)  # the clients' own unmeasured warm-up
        cpu_before = _cpu_seconds(process.pid)
        reports = [out.get(timeout=duration + warmup + 120) for _ in procs]
        cpu_after = _cpu_seconds(process.pid)
        for proc in procs:
            proc.join(timeout=30)
        counters = requests.get(f"{url}/_admin/counters", timeout=30).json()
    finally:
        sb.stop()
    latencies = sorted(lat for r in reports for lat in r["latencies"])
    pages = sum(r["pages"] for r in reports)
    total_bytes = sum(r["bytes"] for r in reports)

    def pct(p: float) -> float:
        return float(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000)

    return {
        "benchmark": "sandbox_throughput",
        "endpoint": "GET /v2/bookings?page[size]=100 (cursor walks, keep-alive)",
        "clients": clients,
        "duration_s": duration,
        "warmup_s": warmup,
        "orgs": orgs,
        "bookings_per_org": bookings,
        "pages": pages,
        "errors": sum(r["errors"] for r in reports),
        "requests_per_s": round(pages / duration, 1),
        "bookings_per_s": round(pages * 100 / duration),
        "mb_per_s": round(total_bytes / duration / 1e6, 2),
        "avg_page_bytes": round(total_bytes / pages) if pages else 0,
        "latency_ms": {
            "p50": round(pct(0.50), 2),
            "p95": round(pct(0.95), 2),
            "p99": round(pct(0.99), 2),
            "mean": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
        },
        "server_api_requests": counters["api_requests"],
        # Server CPU per page, from /proc (Linux); None elsewhere.
        "server_cpu_ms_per_page": (
            round((cpu_after - cpu_before) * 1000 / pages, 3)
            if pages and cpu_before is not None and cpu_after is not None
            else None
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine skews the figure; this says how much there was.
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    """Parse flags, run, print a table and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--orgs", type=int, default=3)
    parser.add_argument("--bookings", type=int, default=1000, help="per org")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.clients, args.duration, args.warmup, args.orgs, args.bookings)
    lat = result["latency_ms"]
    rows = [
        ("clients", f"{result['clients']}"),
        ("pages (100 bookings) / s", f"{result['requests_per_s']:.0f}"),
        ("bookings / s", f"{result['bookings_per_s']:,}"),
        ("MB / s", f"{result['mb_per_s']:.1f}"),
        ("latency p50 / p95 / p99 ms", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        ("server CPU ms / page", f"{result['server_cpu_ms_per_page']}"),
        ("errors", f"{result['errors']}"),
        (
            "cpus / load average",
            f"{result['machine']['cpus']} / {result['machine']['load_average_1m']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("sandbox throughput")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {args.output}")
    return 0 if result["errors"] == 0 and result["pages"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
