"""The ``etbridge`` command: check, orgs, resync, dlq and replay, as subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import redis

from etbridge import keys
from etbridge.poller import Poller
from etbridge.settings import parse_sink
from tests.support.cli import run_cli
from tests.support.replies import stream_events
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for

SECRET = "sandbox-secret"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=10, seed=3, rate_limit=10_000) as sb:
        yield sb


def run(
    sandbox: Sandbox, redis_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        sandbox, redis_url, *args, **{"ETBRIDGE_SINKS": "redis-stream:cli:events", **env}
    )


def test_check_succeeds_against_the_sandbox(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(sandbox, redis_url, "check")
    assert proc.returncode == 0, proc.stderr
    assert "orgs      2: 1001" in proc.stdout
    assert "rate      limit 10000 per minute" in proc.stdout
    assert "expires in" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_check_with_a_wrong_secret_says_so_in_one_line(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(sandbox, redis_url, "check", ETBRIDGE_CLIENT_SECRET="wrong-secret-123")
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1
    assert "invalid_client" in err[0]
    assert "wrong-secret-123" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_resync_orgs_and_replay(sandbox: Sandbox, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rt = runtime_for(sandbox, redis_url, emit_baseline=True)
    Poller(rt.redis, rt.settings, rt.api).poll("1001")

    proc = run(sandbox, redis_url, "resync", "1001")
    assert proc.returncode == 0
    assert client.hget(keys.DEFAULT.org_meta("1001", "bookings"), "resync") == b"1"
    (result,) = Poller(rt.redis, rt.settings, rt.api).poll("1001")
    assert result.mode == "sweep"
    assert client.hget(keys.DEFAULT.org_meta("1001", "bookings"), "resync") is None

    proc = run(sandbox, redis_url, "orgs", ETBRIDGE_ORGS="1001,1002")
    assert proc.returncode == 0
    assert "1001" in proc.stdout and "1002" in proc.stdout

    snapshots = client.xlen(keys.DEFAULT.outbox("1001"))
    assert snapshots == 10
    proc = run(
        sandbox,
        redis_url,
        "replay",
        "--sink",
        "redis-stream:replayed",
        "--since",
        "1h",
        ETBRIDGE_ORGS="1001",
    )
    assert proc.returncode == 0, proc.stderr
    assert "replayed 10 event(s)" in proc.stdout
    replayed = stream_events(client, "replayed")
    outbox = stream_events(client, keys.DEFAULT.outbox("1001"))
    assert [e["id"] for e in replayed] == [e["id"] for e in outbox]

    proc = run(sandbox, redis_url, "replay", "--sink", "ftp://nope", "--since", "1h")
    assert proc.returncode == 2
    assert "unknown sink scheme" in proc.stderr


def test_dlq_list_is_empty_and_redeliver_needs_ids(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(sandbox, redis_url, "dlq", "list")
    assert proc.returncode == 0
    assert proc.stdout == ""
    proc = run(sandbox, redis_url, "dlq", "redeliver")
    assert proc.returncode == 2
    assert "--all" in proc.stderr


def test_settings_mistake_and_unreachable_redis(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(sandbox, redis_url, "orgs", ETBRIDGE_REDIS_URL="redis://127.0.0.1:1/0")
    assert proc.returncode == 1
    assert "cannot reach Redis" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sink_enable(sandbox: Sandbox, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    name = parse_sink("redis-stream:cli:events").name
    client.hset(keys.DEFAULT.sink_state(name), mapping={"disabled": "1", "disabled_reason": "410"})
    proc = run(sandbox, redis_url, "sink", "enable", "redis-stream:cli:events")
    assert proc.returncode == 0, proc.stderr
    assert client.hget(keys.DEFAULT.sink_state(name), "disabled") is None
    proc = run(sandbox, redis_url, "sink", "enable", "gopher://x")
    assert proc.returncode == 2


def test_state_finish_upgrade_marks_the_format_and_drops_the_old_digests(
    sandbox: Sandbox, redis_url: str, r: redis.Redis
) -> None:
    r.hset(keys.DEFAULT.orgs, "1001", "{}")
    r.hset(keys.DEFAULT.fingerprints("1001", "bookings"), "1", "ab")
    proc = run(sandbox, redis_url, "state", "finish-upgrade", "--wait", "0")
    assert proc.returncode == 0, proc.stderr
    assert "1 pre-format-3 digest hashes removed" in proc.stdout
    assert r.get(keys.DEFAULT.state_format) == b"3"
    assert not r.exists(keys.DEFAULT.fingerprints("1001", "bookings"))
