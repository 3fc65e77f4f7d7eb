"""GET /healthz and /readyz of real ``celery worker`` and ``celery beat`` processes."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from etbridge import health
from etbridge.redisserver import RedisServer, free_port
from etbridge.settings import load_settings
from tests.support.fleet import Proc, fleet_env, wait_for
from tests.support.sandbox import Sandbox

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REDIS_PASSWORD = "redis-pass-4711-xyz"
FERNET_KEY = Fernet.generate_key().decode()
SENTRY_KEY = "0123456789abcdef0123456789abcdef"
SENTRY_DSN = f"http://{SENTRY_KEY}@127.0.0.1:9/16"


def get(port: int, path: str) -> tuple[int, dict[str, Any], str]:
    """(status, JSON body, raw body) of one probe; (0, {}, "") while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            raw = resp.read().decode()
            return resp.status, json.loads(raw), raw
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode()
        return exc.code, json.loads(raw), raw
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, ""


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "etbridge.worker", *args]


def worker_args(name: str) -> list[str]:
    return celery(
        "worker",
        "--concurrency",
        "1",
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    )


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=20, seed=16, rate_limit=10_000) as sb:
        yield sb


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


def start(
    name: str, args: list[str], env: dict[str, str], tmp_path: Path, **extra: str
) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(name, args, {**env, "ETBRIDGE_HEALTH_PORT": str(port), **extra}, tmp_path)
    return proc, port


def test_worker_and_beat_serve_health_without_secrets(
    sandbox: Sandbox, private_redis: RedisServer, tmp_path: Path
) -> None:
    env = fleet_env(
        sandbox,
        private_redis.url,
        ETBRIDGE_WEBHOOK_SECRET=WHSEC,
        ETBRIDGE_TOKEN_ENCRYPTION_KEY=FERNET_KEY,
        SENTRY_DSN=SENTRY_DSN,  # nothing listens there: events are dropped
    )
    worker, wport = start("worker", worker_args("w1"), env, tmp_path)
    beat, bport = start(
        "beat", celery("beat", "--schedule", str(tmp_path / "beat-schedule")), env, tmp_path
    )
    procs = [worker, beat]
    try:
        for port, role in ((wport, "worker"), (bport, "beat")):
            code, doc, _ = wait_for(
                lambda p=port: (r := get(p, "/healthz"))[0] and r, 60, f"{role} /healthz"
            )
            assert code == 200, doc
            assert doc["role"] == role and doc["status"] == "ok"
            assert doc["checks"]["main_thread"]["ok"] is True
        client = redis.Redis.from_url(private_redis.url)
        # A poll fetched the token: readiness sees it as valid, on both.
        wait_for(lambda: client.keys("etb:token:*"), 60, "a cached token")
        bodies = []
        for port, role in ((wport, "worker"), (bport, "beat")):
            code, doc, raw = wait_for(
                lambda p=port: (r := get(p, "/readyz"))[0] == 200 and r, 30, f"{role} ready"
            )
            checks = doc["checks"]
            assert set(checks) == {"redis", "broker", "token", "heartbeat", "shutdown"}
            assert checks["redis"]["ok"] and checks["broker"]["ok"]
            assert checks["token"]["state"] == "valid" and checks["token"]["expires_in"] > 0
            assert checks["heartbeat"]["age"] < health.READY_MAX_AGE
            bodies.append(raw)
            bodies.append(get(port, "/healthz")[2])
        assert get(wport, "/nope")[0] == 404
        # The heartbeats keep coming: the worker's loop timer, beat's tick publishes.
        for port in (wport, bport):
            wait_for(lambda p=port: get(p, "/healthz")[1]["uptime"] > 12, 30, "12 s of uptime")
            age = get(port, "/healthz")[1]["checks"]["heartbeat"]["age"]
            assert age < health.HEARTBEAT_INTERVAL + 2, age
        tokens = [
            Fernet(FERNET_KEY).decrypt(v).decode()  # encrypted at rest with the key
            for key in client.keys("etb:token:*")
            if client.type(key) == b"hash"
            for v in [client.hget(key, "token")]
            if v
        ]
        assert tokens, "the cached access token, to look for"
        for body in bodies:
            for secret in (
                sandbox.client_secret,
                WHSEC,
                REDIS_PASSWORD,
                FERNET_KEY,
                SENTRY_DSN,
                SENTRY_KEY,
                *tokens,
            ):
                assert secret not in body

        # Redis goes away: neither is ready, both are still alive (no restart loop).
        private_redis.stop()
        for port in (wport, bport):
            code, doc, raw = wait_for(
                lambda p=port: (r := get(p, "/readyz"))[0] == 503 and r, 30, "not ready"
            )
            assert doc["checks"]["redis"]["ok"] is False
            assert doc["checks"]["broker"]["ok"] is False
            assert doc["checks"]["redis"]["error"]
            assert REDIS_PASSWORD not in raw and sandbox.client_secret not in raw
            assert get(port, "/healthz")[0] == 200
    finally:
        for proc in procs:
            proc.stop()


def test_wrong_credentials_stay_ready_an_unreachable_token_endpoint_does_not(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    wrong = fleet_env(sandbox, redis_url, ETBRIDGE_CLIENT_SECRET="wrong-secret-16")
    dead_port = free_port()
    # Its own Redis database: a fleet of its own (planner tick, orgs, token cache).
    unreachable = fleet_env(
        sandbox,
        redis_url.rsplit("/", 1)[0] + "/1",
        ETBRIDGE_CLIENT_ID="another-client",
        ETBRIDGE_TOKEN_URL=f"http://127.0.0.1:{dead_port}/oauth/token",
    )
    procs = []
    ports = {}
    for label, env in (("wrong", wrong), ("unreachable", unreachable)):
        w, port = start(f"{label}-worker", worker_args(label), env, tmp_path)
        b, _ = start(
            f"{label}-beat",
            celery("beat", "--schedule", str(tmp_path / f"{label}-schedule")),
            env,
            tmp_path,
        )
        procs += [w, b]
        ports[label] = port
    try:
        code, doc, _ = wait_for(
            lambda: (
                (r := get(ports["wrong"], "/readyz"))[1]
                .get("checks", {})
                .get("token", {})
                .get("state")
                == "invalid_client"
                and r
            ),
            90,
            "invalid_client in readiness",
        )
        assert code == 200 and doc["status"] == "ok", doc
        code, doc, _ = wait_for(
            lambda: (
                (r := get(ports["unreachable"], "/readyz"))[1]
                .get("checks", {})
                .get("token", {})
                .get("state")
                not in (None, "none")
                and r
            ),
            90,
            "a token failure in readiness",
        )
        assert code == 503, doc
        assert doc["checks"]["token"]["ok"] is False
        assert doc["checks"]["token"]["state"] == "unreachable"
    finally:
        for proc in procs:
            proc.stop()


def test_heartbeat_and_token_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETBRIDGE_CLIENT_ID", "c")
    monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET", "s")
    h = health.Health(load_settings(), "worker")
    h.last_beat = time.monotonic() - health.LIVE_MAX_AGE - 1
    ok, doc = h.liveness()
    assert ok is False and doc["checks"]["heartbeat"]["ok"] is False
    h.beat()
    assert h.liveness()[0] is True

    now = 1_800_000_000.0
    future = "2027-02-01T00:00:00Z"  # after `now` (2027-01-15T08:00Z)
    past = "2026-01-01T00:00:00Z"
    assert health.token_check({"expires_at": future}, now)["state"] == "valid"
    assert health.token_check({}, now) == {"ok": True, "state": "none"}
    assert health.token_check({"expires_at": past}, now)["ok"] is True
    assert health.token_check({"error": "invalid_client"}, now)["ok"] is True
    assert health.token_check({"error": "server_error", "expires_at": past}, now)["ok"] is False
    # A usable token is usable, whatever the last refresh said.
    assert health.token_check({"error": "server_error", "expires_at": future}, now)["ok"] is True
