"""Log lines: key=value and JSON formats, bound org_id/task_id, and no secret anywhere."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from etbridge import logs
from etbridge.auth import TokenCache
from etbridge.settings import load_settings
from tests.support.fleet import fleet, fleet_env, read_sink, wait_for
from tests.support.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_kv(line: str) -> dict[str, str]:
    """The key/values of one key=value line (quoted values are JSON strings)."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _KV.findall(line)}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() replaces the root handlers and secrets are global: put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    secrets, transient = set(logs._secrets), dict(logs._transient)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logs._secrets.clear()
    logs._secrets.update(secrets)
    logs._transient.clear()
    logs._transient.update(transient)


def _capture(fmt: str) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(fmt, "DEBUG", stream=stream)
    return stream


def test_key_value_lines_carry_the_bound_ids() -> None:
    stream = _capture("kv")
    log = logging.getLogger("etbridge.poller")
    with logs.bind(org_id="1001", task_id="t-1"):
        log.info("poll done pages=%d", 3)
        with logs.bind(task_id="t-2"):
            log.warning('a "quoted" value=x\nand a second line')
    log.info("outside")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # a message with a line break stays on one line
    first, second, third = (parse_kv(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "etbridge.poller"
    assert first["msg"] == "poll done pages=3"
    assert (first["org_id"], first["task_id"]) == ("1001", "t-1")
    assert second["msg"] == 'a "quoted" value=x\nand a second line'
    assert (second["org_id"], second["task_id"]) == ("1001", "t-2")
    assert "org_id" not in third and "task_id" not in third
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])


def test_json_lines_are_one_object_each() -> None:
    stream = _capture("json")
    log = logging.getLogger("etbridge.outbox")
    with logs.bind(org_id="1002", task_id="abc"):
        log.info("delivery org_id=%s outcome=%s", "1002", "caught_up")
        try:
            raise ValueError("broken")
        except ValueError:
            log.exception("it failed")
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(docs) == 2
    assert docs[0]["msg"] == "delivery org_id=1002 outcome=caught_up"
    assert docs[0]["org_id"] == "1002" and docs[0]["task_id"] == "abc"
    assert docs[0]["level"] == "info" and docs[0]["logger"] == "etbridge.outbox"
    assert docs[1]["level"] == "error" and "ValueError: broken" in docs[1]["exc"]


def test_bind_drops_empty_values_and_resets() -> None:
    stream = _capture("kv")
    with logs.bind(org_id="7", task_id=""):
        logging.getLogger("x").info("one")
    logging.getLogger("x").info("two")
    one, two = (parse_kv(line) for line in stream.getvalue().splitlines())
    assert one["org_id"] == "7" and "task_id" not in one
    assert "org_id" not in two


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_registered_secrets_never_reach_a_line(fmt: str) -> None:
    stream = _capture(fmt)
    logs.add_secret("client-secret-value-123")
    logs.add_secret("short")  # too short to scrub without mangling ordinary text
    log = logging.getLogger("etbridge.auth")
    log.warning("refused client-secret-value-123 (short)")
    try:
        raise RuntimeError("secret client-secret-value-123 in a traceback")
    except RuntimeError:
        log.exception("failed")
    text = stream.getvalue()
    assert "client-secret-value-123" not in text
    assert text.count("***") >= 2
    assert "(short)" in text


def test_transient_secrets_are_bounded() -> None:
    tokens = [f"token-{i:04d}-abcdefgh" for i in range(logs.MAX_TRANSIENT + 5)]
    for token in tokens:
        logs.add_secret(token, transient=True)
    assert logs.scrub(tokens[-1]) == "***"
    assert logs.scrub(tokens[0]) == tokens[0]  # the oldest were let go
    assert len(logs._transient) == logs.MAX_TRANSIENT


def test_secret_hook_registers_the_tokens_a_session_carries() -> None:
    with Sandbox.start(orgs=1, bookings=2) as sb:
        session = requests.Session()
        session.hooks["response"].append(logs.secret_hook)
        resp = session.post(
            sb.token_url,
            json={
                "grant_type": "client_credentials",
                "client_id": sb.client_id,
                "client_secret": sb.client_secret,
            },
            timeout=30,
        )
        fetched = resp.json()["access_token"]
        assert logs.scrub(f"x {fetched} y") == "x *** y"
        # A token the session only sends (fetched elsewhere) is registered too.
        other = sb.token()
        assert logs.scrub(other) == other
        session.get(f"{sb.url}/v2/organizations", headers={"Authorization": f"Bearer {other}"})
        assert logs.scrub(other) == "***"
        session.close()


# --- a real fleet: every line it writes, scanned -------------------------------------------


def _token(client: redis.Redis, env: dict[str, str]) -> str:
    """The fleet's cached token, read through TokenCache (no token request if cached)."""
    settings = load_settings(
        _env_file=None,
        client_id=env["ETBRIDGE_CLIENT_ID"],
        client_secret=env["ETBRIDGE_CLIENT_SECRET"],
        api_url=env["ETBRIDGE_API_URL"],
        redis_url=env["ETBRIDGE_REDIS_URL"],
    )
    return TokenCache(client, settings).get()


@pytest.mark.slow
def test_fleet_logs_and_status_hold_no_secret(redis_url: str, tmp_path: Path) -> None:
    secret = "cs-" + "9f8e7d6c5b4a" * 3
    client = redis.Redis.from_url(redis_url)
    with Sandbox.start(orgs=3, bookings=15, seed=3, client_secret=secret, rate_limit=600) as sb:
        env = fleet_env(sb, redis_url, ETBRIDGE_RATE_LIMIT="600", ETBRIDGE_EMIT_BASELINE="true")
        with fleet(env, tmp_path) as f:
            f.worker(concurrency=2)
            # A second worker writes JSON lines.
            f.env = {**env, "ETBRIDGE_LOG_FORMAT": "json"}
            json_worker = f.worker(concurrency=1)
            f.env = env
            f.beat()
            wait_for(lambda: len(read_sink(client)) >= 45, 60, "the baseline snapshots")
            first = _token(client, env)
            sb.churn(5)
            time.sleep(5)  # let churn run: the scan covers steady-state lines too
            # A revoked token: the fleet fetches a second one; both must stay out of the logs.
            sb.revoke_tokens()
            issued = sb.counters()["token_requests_ok"]
            wait_for(lambda: sb.counters()["token_requests_ok"] > issued, 30, "a second token")
            time.sleep(5)
            second = _token(client, env)
            sb.churn(0)
            status_runs = [
                subprocess.run(
                    [sys.executable, "-m", "etbridge", "status", *extra],
                    env=env,
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                for extra in ([], ["--json"])
            ]
        assert first != second
        output = {p.name: p.output() for p in f.procs}
    for run in status_runs:
        assert run.returncode == 0, run.stderr
        output[f"status {run.args[3:]}"] = run.stdout + run.stderr
    forbidden = {"client secret": secret, "first token": first, "second token": second}
    for name, text in output.items():
        for what, value in forbidden.items():
            assert value not in text, f"{what} in the output of {name}"

    kv_lines = [parse_kv(line) for line in output["worker1"].splitlines() if line.startswith("ts=")]
    polls = [d for d in kv_lines if d.get("msg", "").startswith("poll done")]
    assert polls and all(d.get("org_id") and d.get("task_id") for d in polls)
    assert any(d.get("msg", "").startswith("delivery ") for d in kv_lines) or any(
        '"delivery ' in line for line in json_worker.output().splitlines()
    )
    all_lines = "\n".join(output.values())
    assert "token fetched" in all_lines
    json_lines = [line for line in json_worker.output().splitlines() if line.startswith("{")]
    docs = [json.loads(line) for line in json_lines]
    assert docs, "the JSON worker wrote no JSON line"
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    assert any(d.get("task_id") and d.get("org_id") for d in docs)
