"""Token requests of a fleet: etbridge's shared Redis token vs one token per process.

16 processes make 500 paced API calls each (``GET /v2/organizations``) against
the sandbox with a 10 s token lifetime over >= 40 s, twice in the same run:

* ``etbridge``: every process uses :class:`etbridge.auth.TokenCache` +
  :class:`~etbridge.auth.BearerAuth` on one private Redis;
* ``baseline``: every process keeps its own token, as authlib or
  requests-oauthlib do: fetched at start, fetched again when it is about to
  expire by the local clock (same leeway as etbridge: min(300 s, 10 %)) or
  after a 401;
* ``baseline_401``: every process keeps its own token and renews it only after
  a 401 (requests-oauthlib's client-credentials session, which does not renew
  by itself), to show the 401s and expired-token requests that costs.

The sandbox counts token requests, 401s and requests sent with an expired
token. Prints a table; writes ``bench/results/token_fleet.json`` (with the
token request times of both, for a plot). ``--quick`` makes a short smoke run.

    python bench/token_fleet.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path: tests.support)
import redis
import requests

from etbridge.auth import BearerAuth, TokenCache, TokenResponse
from etbridge.redisserver import RedisServer
from etbridge.settings import Settings
from etbridge.tokencache import refresh_leeway
from tests.support.sandbox import Sandbox

RESULTS = Path(__file__).resolve().parent / "results" / "token_fleet.json"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-not-for-production"
ctx = mp.get_context("fork")
MODES = ("etbridge", "baseline", "baseline_401")


class TimedTokenCache(TokenCache):
    """Reports when each token request leaves (for the time series)."""

    times: Any = None

    def _request_token(self) -> TokenResponse:
        if self.times is not None:
            self.times.put(time.monotonic())
        return super()._request_token()


class PerProcessToken(requests.auth.AuthBase):
    """The baseline: this process's own token, renewed on local expiry or a 401."""

    def __init__(self, settings: Settings, times: Any, *, on_expiry: bool = True) -> None:
        self.settings = settings
        self.on_expiry = on_expiry
        self.times = times
        self.session = requests.Session()
        self.token: str | None = None
        self.refresh_at = 0.0

    def fetch(self) -> str:
        self.times.put(time.monotonic())
        resp = self.session.post(
            self.settings.token_url,
            json={
                "grant_type": "client_credentials",
                "client_id": self.settings.client_id,
                "client_secret": self.settings.client_secret.get_secret_value(),
                "scope": self.settings.scope,
            },
            timeout=30,
        )
        resp.raise_for_status()
        body = resp.json()
        lifetime = float(body.get("expires_in") or 7200)
        self.token = str(body["access_token"])
        self.refresh_at = time.monotonic() + lifetime - refresh_leeway(lifetime)
        return self.token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.token is None or (self.on_expiry and time.monotonic() >= self.refresh_at):
            self.fetch()
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


def worker(
    mode: str, settings: Settings, calls: int, duration: float, go: Any, times: Any, out: Any
) -> None:
    session = requests.Session()
    if mode == "etbridge":
        cache = TimedTokenCache(redis.Redis.from_url(settings.redis_url), settings)
        cache.times = times
        session.auth = BearerAuth(cache)
        baseline: PerProcessToken | None = None
    else:
        baseline = PerProcessToken(settings, times, on_expiry=mode == "baseline")
        session.auth = baseline
    url = f"{settings.api_url}/v2/organizations"
    stats = {"calls": 0, "ok": 0, "retried_401": 0, "errors": 0}
    go.wait(60)
    start = time.monotonic()
    step = duration / max(1, calls - 1)
    for i in range(calls):
        delay = start + i * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stats["calls"] += 1
        try:
            resp = session.get(url, timeout=30)
            if resp.status_code == 401 and baseline is not None:
                # What a per-process client does: fetch a new token, retry once.
                stats["retried_401"] += 1
                baseline.fetch()
                resp = session.get(url, timeout=30)
            if resp.history:
                stats["retried_401"] += 1
            stats["ok"] += resp.status_code == 200
            stats["errors"] += resp.status_code != 200
        except Exception:
            stats["errors"] += 1
    out.put(stats)


def run_phase(
    mode: str, sb: Sandbox, redis_url: str, processes: int, calls: int, duration: float
) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushall()
    sb.admin("POST", "reset")
    settings = Settings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        api_url=sb.url,
        redis_url=redis_url,
    )
    go, times, out = ctx.Barrier(processes + 1), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(mode, settings, calls, duration, go, times, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    go.wait(60)
    t0 = time.monotonic()
    stats = [out.get(timeout=duration * 3 + 120) for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(30)
    token_times: list[float] = []
    while not times.empty():
        token_times.append(round(times.get() - t0, 3))
    counters = sb.admin("GET", "counters")
    return {
        "duration_s": round(elapsed, 2),
        "token_requests": counters["token_requests"],
        "token_request_times_s": sorted(token_times),
        "api_requests": counters["api_requests"],
        "unauthorized_401": counters["unauthorized"],
        "expired_token_requests": counters["expired_token_requests"],
        "client_retries_after_401": sum(s["retried_401"] for s in stats),
        "calls": sum(s["calls"] for s in stats),
        "ok": sum(s["ok"] for s in stats),
        "errors": sum(s["errors"] for s in stats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--calls", type=int, default=None, help="API calls per process")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase")
    parser.add_argument("--token-ttl", type=int, default=None, help="token lifetime, seconds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    calls = args.calls or (100 if args.quick else 500)
    duration = args.duration or (12.0 if args.quick else 42.0)
    ttl = args.token_ttl or (4 if args.quick else 10)

    results: dict[str, Any] = {
        "benchmark": "token_fleet",
        "config": {
            "processes": args.processes,
            "calls_per_process": calls,
            "phase_duration_s": duration,
            "token_lifetime_s": ttl,
            "quick": args.quick,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    with RedisServer() as server:
        sb = Sandbox.start(
            orgs=1,
            bookings=1,
            token_ttl=ttl,
            rate_limit=100_000_000,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
        try:
            for mode in MODES:
                print(f"running {mode}: {args.processes} processes x {calls} calls ...", flush=True)
                results[mode] = run_phase(mode, sb, server.url, args.processes, calls, duration)
        finally:
            sb.stop()
    for mode in MODES:
        phase = results[mode]
        phase["ideal_token_requests"] = math.ceil(phase["duration_s"] / ttl)
    ours, base, only401 = results["etbridge"], results["baseline"], results["baseline_401"]
    results["baseline_over_etbridge"] = round(
        base["token_requests"] / max(1, ours["token_requests"]), 1
    )
    results["targets_met"] = {
        "etbridge_token_requests_at_most_ideal_plus_1": ours["token_requests"]
        <= ours["ideal_token_requests"] + 1,
        "etbridge_no_expired_token_requests": ours["expired_token_requests"] == 0,
    }

    rows = [
        ("phase duration (s)", "duration_s"),
        ("API calls", "calls"),
        ("  answered 200", "ok"),
        ("  errors", "errors"),
        ("token requests", "token_requests"),
        ("  ideal ceil(duration/lifetime)", "ideal_token_requests"),
        ("401s served", "unauthorized_401"),
        ("requests with an expired token", "expired_token_requests"),
    ]
    print()
    print(f"{'':34} {'etbridge':>10} {'baseline':>10} {'on 401 only':>12}")
    for label, key in rows:
        print(f"{label:34} {ours[key]!s:>10} {base[key]!s:>10} {only401[key]!s:>12}")
    print(f"{'baseline / etbridge token requests':34} {results['baseline_over_etbridge']:>10}")
    print(f"targets met: {results['targets_met']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if all(results["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
