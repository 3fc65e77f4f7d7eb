"""Issue 18: adding and removing applications with ``etbridge apps reload``, no restart.

A real sandbox serves applications ``a`` (org 1001), ``b`` (org 1002) and
``c`` (org 1003); one worker and one beat start with ``a`` and ``b``. ``b``'s
webhook receiver answers 503, so a change of ``b`` waits in its outbox. The
file then lists ``a`` and ``c`` and ``etbridge apps reload`` runs: ``c``'s
events appear, ``b`` is polled no more, and once its receiver answers again
``b``'s pending event is delivered (a removed application's outbox drains).
A file with a mistake is refused (exit 2, one line) and changes nothing;
SIGHUP to beat reloads as the command does.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis

from etbridge import appsreload, keys
from tests.support.cli import etbridge_command
from tests.support.faults import WEBHOOK_SECRET
from tests.support.fleet import fleet, fleet_env, read_sink, wait_for
from tests.support.receiver import Receiver, Reply
from tests.support.sandbox import Sandbox, SandboxApp

pytestmark = pytest.mark.slow

APPS = {
    "a": SandboxApp("a-client", "a-secret-1234", orgs=("1001",)),
    "b": SandboxApp("b-client", "b-secret-1234", orgs=("1002",)),
    "c": SandboxApp("c-client", "c-secret-1234", orgs=("1003",)),
}
UPDATED = "com.eventtemple.booking.updated"


def table(name: str, url: str, sink: str, extra: str = "") -> str:
    app = APPS[name]
    return (
        f'[apps.{name}]\nclient_id = "{app.client_id}"\nclient_secret = "{app.client_secret}"\n'
        f'api_url = "{url}"\norgs = ["{app.orgs[0] if app.orgs else ""}"]\n'
        f'sinks = ["{sink}"]\n{extra}\n'
    )


def baselined(client: redis.Redis, name: str) -> bool:
    org = (APPS[name].orgs or ("",))[0]
    return client.hget(keys.Keyspace(name).org_meta(org, "bookings"), "baselined") == b"1"


def updates(client: redis.Redis, name: str) -> list[str]:
    return [e["etapp"] for e in read_sink(client, f"{name}:events") if e["type"] == UPDATED]


def api_requests(sb: Sandbox, name: str) -> int:
    by_app = sb.counters()["by_app"]
    return int(by_app.get(APPS[name].client_id, {}).get("api_requests", 0))


def test_reload_adds_and_removes_applications(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    path = tmp_path / "apps.toml"
    with (
        Sandbox.start(orgs=3, bookings=3, seed=18, rate_limit=100, apps=list(APPS.values())) as sb,
        Receiver(WEBHOOK_SECRET) as rx,
    ):
        a = table("a", sb.url, "redis-stream:a:events")
        b = table("b", sb.url, rx.url, f'webhook_secret = "{WEBHOOK_SECRET}"\n')
        c = table("c", sb.url, "redis-stream:c:events")
        path.write_text(a + b)
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_APPS_FILE=str(path),
            ETBRIDGE_POLL_INTERVAL="1",
            # b's event waits through many one-second retries, never dead-lettered here.
            ETBRIDGE_RETRY_SCHEDULE=",".join(["0"] + ["1"] * 90),
        )
        del env["ETBRIDGE_CLIENT_ID"], env["ETBRIDGE_CLIENT_SECRET"]
        rx.reply_default(Reply.error(503))
        with fleet(env, tmp_path) as f:
            procs = [f.worker(concurrency=2), f.beat()]
            wait_for(lambda: baselined(client, "a") and baselined(client, "b"), 40, "baselines")
            sb.mutate(1, org="1002", kinds=["update"])
            wait_for(lambda: rx.arrivals, 20, "b's event at its (failing) receiver")

            # Add c, remove b: no restart.
            path.write_text(a + c)
            done = etbridge_command(env, "apps", "reload")
            assert done.returncode == 0, done.stderr
            assert "a, c" in done.stdout
            wait_for(lambda: baselined(client, "c"), 30, "c's baseline after the reload")
            sb.mutate(1, org="1003", kinds=["update"])
            wait_for(lambda: updates(client, "c") == ["c"], 20, "c's event in c's sink")

            # b is polled no more, while a and c go on.
            b_requests = api_requests(sb, "b")
            sb.mutate(1, org="1001", kinds=["update"])
            sb.mutate(1, org="1003", kinds=["update"])
            wait_for(
                lambda: len(updates(client, "a")) >= 1 and len(updates(client, "c")) >= 2,
                20,
                "a's and c's later events",
            )
            assert api_requests(sb, "b") == b_requests

            # b's pending event still goes out once its receiver answers.
            rx.reply_default(Reply.ok())
            wait_for(rx.delivered_ids, 20, "b's pending event delivered after removal")

            # A file with a mistake is refused and changes nothing.
            generation = appsreload.generation(client)
            path.write_text(a + c.replace("orgs = ", "rate_limit = 0\norgs = "))
            bad = etbridge_command(env, "apps", "reload")
            assert bad.returncode == 2
            assert bad.stderr.strip().splitlines() == [
                "etbridge: configuration error: ETBRIDGE_APPS_FILE: app 'c': rate_limit: "
                "Input should be greater than 0"
            ]
            assert appsreload.generation(client) == generation
            sb.mutate(1, org="1003", kinds=["update"])
            wait_for(lambda: len(updates(client, "c")) >= 3, 20, "c still served")
            # Drained, the removed application's relay stops.
            wait_for(
                lambda: "removed application b: its outbox is delivered" in procs[0].output(),
                20,
                "b's relay stopped",
            )

            # SIGHUP to beat: the file checked, the generation bumped, b served again.
            path.write_text(a + b + c)
            os.kill(procs[1].popen.pid, signal.SIGHUP)
            wait_for(lambda: appsreload.generation(client) == generation + 1, 20, "SIGHUP")
            wait_for(
                lambda: "(added: b; removed: none)" in procs[0].output(),
                20,
                "the worker serving b again",
            )
            assert all(p.alive() for p in procs), f.logs()
            logs = "\n".join(p.output() for p in procs)

    envelope = rx.delivered()[0].envelope
    assert envelope is not None
    assert envelope["etapp"] == "b", envelope
    assert "applications reloaded: a, c (added: c; removed: b)" in logs
    assert "sender stopped: application b was removed" in logs
    for app in APPS.values():
        assert app.client_secret not in logs
    assert WEBHOOK_SECRET not in logs
