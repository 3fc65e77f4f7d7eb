"""``etbridge status`` against a running fleet: the contract's fields, and wrong credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from etbridge.backoff import max_attempts_in as max_requests_in
from etbridge.tokencache import AUTH_BACKOFF_BASE, AUTH_BACKOFF_CAP
from tests.support.fleet import fleet, fleet_env, wait_for
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.slow


def status(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etbridge", "status", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def status_json(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    run = status(env, cwd, "--json")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, "status --json prints one JSON object on one line"
    doc: dict[str, Any] = json.loads(lines[0])
    return doc


def _time(value: str | None) -> float:
    assert isinstance(value, str), value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_status_json_matches_the_contract(redis_url: str, tmp_path: Path) -> None:
    with Sandbox.start(orgs=3, bookings=20, seed=7, rate_limit=600, churn=2) as sb:
        env = fleet_env(sb, redis_url, ETBRIDGE_RATE_LIMIT="600")
        with fleet(env, tmp_path) as f:
            f.worker(concurrency=2)
            f.beat()

            def polled() -> dict[str, Any] | None:
                doc = status_json(env, tmp_path)
                orgs = doc["orgs"]
                ok = len(orgs) == 3 and all(
                    o["last_poll"] and o["last_full_sweep"] and o["watermark"]
                    for o in orgs.values()
                )
                return doc if ok and doc["token"]["expires_at"] else None

            doc = wait_for(polled, 60, "every org polled and swept", interval=1)
            now = time.time()
            for org_id, org in doc["orgs"].items():
                assert org_id in ("1001", "1002", "1003")
                assert {"last_poll", "last_full_sweep", "watermark", "lag", "errors"} <= set(org)
                assert now - 120 < _time(org["last_poll"]) <= now + 5
                assert _time(org["last_full_sweep"]) <= now + 5
                _time(org["watermark"])
                assert isinstance(org["lag"], (int, float)) and 0 <= org["lag"] < 120
                assert org["errors"] == 0
            token = doc["token"]
            assert {"expires_at", "fetched_at", "error"} <= set(token)
            assert token["error"] is None
            assert _time(token["fetched_at"]) <= now + 5 < _time(token["expires_at"])
            budget = doc["rate_budget"]
            assert {"limit", "used", "paused_until"} <= set(budget)
            assert budget["limit"] == 600 and budget["used"] > 0
            assert budget["paused_until"] is None
            outbox = doc["outbox"]
            assert isinstance(outbox["pending"], int) and outbox["dead_lettered"] == 0

            # orgs lists what the planner discovered; resync makes the next poll a sweep.
            orgs = subprocess.run(
                [sys.executable, "-m", "etbridge", "orgs"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert orgs.returncode == 0 and orgs.stdout.startswith("discovered:"), orgs
            assert all(o in orgs.stdout for o in ("1001", "1002", "1003"))
            swept = _time(status_json(env, tmp_path)["orgs"]["1001"]["last_full_sweep"])
            resync = subprocess.run(
                [sys.executable, "-m", "etbridge", "resync", "1001"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert resync.returncode == 0 and "full sweep" in resync.stdout, resync
            wait_for(
                lambda: (
                    _time(status_json(env, tmp_path)["orgs"]["1001"]["last_full_sweep"]) > swept
                ),
                60,
                "the resync sweep",
                interval=1,
            )
            # A 429 pauses the whole fleet: status shows until when.
            sb.force_429(3, retry_after=15)
            paused = wait_for(
                lambda: status_json(env, tmp_path)["rate_budget"]["paused_until"],
                30,
                "the fleet's pause",
                interval=0.5,
            )
            assert _time(paused) > time.time()

            table = status(env, tmp_path)
            assert table.returncode == 0, table.stderr
            for word in ("token", "budget", "outbox", "1001", "1002", "1003", "paused until"):
                assert word in table.stdout.lower()
        # status reads Redis only: no token request, no API call, even with no fleet.
        before = sb.counters()
        assert status(env, tmp_path, "--json").returncode == 0
        after = sb.counters()
        assert after["token_requests"] == before["token_requests"]
        assert after["api_requests"] == before["api_requests"]


def test_wrong_credentials_show_in_status_and_back_off(redis_url: str, tmp_path: Path) -> None:
    with Sandbox.start(orgs=2, bookings=5) as sb:
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_CLIENT_SECRET="not-the-secret",
            ETBRIDGE_ORGS="1001,1002",
        )
        with fleet(env, tmp_path) as f:
            procs = [f.worker(concurrency=2), f.worker(concurrency=1), f.beat()]
            start = time.monotonic()
            doc = wait_for(
                lambda: (d := status_json(env, tmp_path))["token"]["error"] and d,
                60,
                "invalid_client in status",
                interval=1,
            )
            assert doc["token"]["error"] == "invalid_client"
            assert doc["token"]["expires_at"] is None
            # Let the fleet run past the first backoff step (30 s).
            wait_for(lambda: time.monotonic() - start > 40, 50, "40 s", interval=1)
            elapsed = time.monotonic() - start
            assert all(p.alive() for p in procs), f.logs()
            doc = status_json(env, tmp_path)
            requests_made = sb.counters()["token_requests"]
        assert doc["token"]["error"] == "invalid_client"
        # One request, then one per backoff step, fleet-wide (30 s, 60 s, ...).
        assert 1 <= requests_made <= max_requests_in(elapsed, AUTH_BACKOFF_BASE, AUTH_BACKOFF_CAP)
        for org in doc["orgs"].values():
            assert org["errors"] >= 1
            assert "invalid_client" in (org["last_error"] or "")
        assert sb.counters()["api_requests"] == 0
        table = status(env, tmp_path)
        assert "ERROR invalid_client" in table.stdout, table.stdout
        worker_log = procs[0].output() + procs[1].output()
        assert "invalid_client" in worker_log
        assert "not-the-secret" not in worker_log
        assert "Traceback" not in worker_log
