"""Issue 18: one worker + beat fleet serves the three applications of an apps file.

A real sandbox serves three applications: ``good`` (orgs 1001, 1002), ``slow``
(orgs 1002, 1003, 30 requests a minute) and ``bad`` (org 1004), whose secret
in the apps file is wrong. ETBRIDGE_CLIENT_ID/SECRET are not set. The good
applications' changes reach their own sinks, named by ``etapp`` and the
``/apps/<name>/...`` source; the bad one logs invalid_client and stops
nothing; no 429 and one token per application (the bad one: on its backoff).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from etbridge import keys
from etbridge.backoff import max_attempts_in as max_requests_in
from etbridge.tokencache import AUTH_BACKOFF_BASE, AUTH_BACKOFF_CAP
from tests.support.cli import etbridge_command
from tests.support.fleet import fleet, fleet_env, read_sink, wait_for
from tests.support.sandbox import Sandbox, SandboxApp

pytestmark = pytest.mark.slow

GOOD = SandboxApp("good-client", "good-secret-1234", orgs=("1001", "1002"))
SLOW = SandboxApp("slow-client", "slow-secret-1234", orgs=("1002", "1003"), rate_limit=30)
BAD = SandboxApp("bad-client", "bad-secret-1234", orgs=("1004",))
WRONG = "wrong-secret-5678"
ORGS = {"good": ("1001", "1002"), "slow": ("1002", "1003"), "bad": ("1004",)}


def apps_file(path: Path, url: str) -> Path:
    table = {
        "good": (GOOD, GOOD.client_secret, 100),
        "slow": (SLOW, SLOW.client_secret, 30),
        "bad": (BAD, WRONG, 100),
    }
    path.write_text(
        "".join(
            f'[apps.{name}]\nclient_id = "{app.client_id}"\nclient_secret = "{secret}"\n'
            f'api_url = "{url}"\nrate_limit = {limit}\n'
            f"orgs = {json.dumps(list(ORGS[name]))}\n"
            f'sinks = "redis-stream:{name}:events"\n\n'
            for name, (app, secret, limit) in table.items()
        )
    )
    return path


def baselined(client: redis.Redis, app: str) -> bool:
    ks = keys.Keyspace(app)
    return all(client.hget(ks.org_meta(o, "bookings"), "baselined") == b"1" for o in ORGS[app])


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return etbridge_command(env, "status", *args)


def orgs_with_updates(events: list[dict[str, Any]]) -> set[str]:
    return {e["orgid"] for e in events if e["type"] == "com.eventtemple.booking.updated"}


def test_one_fleet_serves_three_applications(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    with Sandbox.start(orgs=4, bookings=4, seed=18, rate_limit=100, apps=[GOOD, SLOW, BAD]) as sb:
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_APPS_FILE=str(apps_file(tmp_path / "apps.toml", sb.url)),
            ETBRIDGE_POLL_INTERVAL="2",
        )
        # The file's applications bring their own credentials.
        del env["ETBRIDGE_CLIENT_ID"], env["ETBRIDGE_CLIENT_SECRET"]
        started = time.monotonic()
        with fleet(env, tmp_path) as f:
            procs = [f.worker(concurrency=2), f.beat()]
            wait_for(
                lambda: baselined(client, "good") and baselined(client, "slow"),
                60,
                "the good and slow applications' baselines",
            )
            for org in ("1001", "1002", "1003"):
                sb.mutate(1, org=org, kinds=["update"])
            wait_for(
                lambda: (
                    orgs_with_updates(read_sink(client, "good:events")) == {"1001", "1002"}
                    and orgs_with_updates(read_sink(client, "slow:events")) == {"1002", "1003"}
                ),
                45,
                "the updates in each application's own sink",
            )
            doc = json.loads(status(env, "--json").stdout)
            table = status(env).stdout
            elapsed = time.monotonic() - started
            assert all(p.alive() for p in procs), f.logs()
            logs = "\n".join(p.output() for p in procs)
            counters = sb.counters()

    sinks = {name: read_sink(client, f"{name}:events") for name in ("good", "slow", "bad")}
    for name in ("good", "slow"):
        assert sinks[name], name
        for event in sinks[name]:
            # Each event names its application; none of another's is in the sink.
            assert event["etapp"] == name, event
            assert event["orgid"] in ORGS[name], event
            assert event["source"] == f"/apps/{name}/orgs/{event['orgid']}/bookings", event
    assert sinks["bad"] == []
    # One change of org 1002 seen by two applications: the contract's id, two sources.
    good_1002 = {e["id"] for e in sinks["good"] if e["orgid"] == "1002"}
    slow_1002 = {e["id"] for e in sinks["slow"] if e["orgid"] == "1002"}
    assert good_1002 & slow_1002

    # The bad application: a clear error, its token endpoint on its backoff, nothing else.
    refused = [line for line in logs.splitlines() if "invalid_client" in line]
    assert refused, logs
    assert all("app=bad" in line for line in refused), refused
    assert any("level=error" in line for line in refused), refused
    assert WRONG not in logs
    per_app = counters["by_app"]
    assert (
        1
        <= per_app[BAD.client_id]["token_requests"]
        <= max_requests_in(elapsed, AUTH_BACKOFF_BASE, AUTH_BACKOFF_CAP)
    )
    assert per_app[BAD.client_id].get("api_requests", 0) == 0
    # One token per application for its lifetime, and no 429 for any.
    for app in (GOOD, SLOW):
        assert per_app[app.client_id]["token_requests"] == 1, per_app
    for app in (GOOD, SLOW, BAD):
        assert per_app.get(app.client_id, {}).get("served_429", 0) == 0, per_app
    assert max(counters["requests_per_window_by_app"][SLOW.client_id].values()) <= 30

    # status: one section per application.
    assert set(doc["apps"]) == {"good", "slow", "bad"}
    assert doc["apps"]["bad"]["token"]["error"] == "invalid_client"
    assert not doc["apps"]["good"]["token"]["error"]
    assert doc["apps"]["slow"]["rate_budget"]["limit"] == 30
    assert set(doc["apps"]["slow"]["orgs"]) == {"1002", "1003"}
    assert doc["apps"]["good"]["planner"]["units"] == 2
    for name in ("good", "slow", "bad"):
        assert f"== application {name} ==" in table
    assert "ERROR invalid_client" in table
