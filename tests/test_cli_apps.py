"""``etbridge apps list|check|reload`` as subprocesses, against a sandbox of three apps."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from etbridge import appsreload
from tests.support.cli import run_cli
from tests.support.sandbox import Sandbox, SandboxApp

ACME = SandboxApp("acme-client", "acme-secret-111", orgs=("1001", "1002"), rate_limit=30)
GLOBEX = SandboxApp("globex-client", "globex-secret-222", orgs=("1003",))
HOOK_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRETS = (ACME.client_secret, GLOBEX.client_secret, "wrong-secret-333", HOOK_KEY, "pw-in-url")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=3, bookings=5, seed=4, rate_limit=10_000, apps=[ACME, GLOBEX]) as sb:
        yield sb


@pytest.fixture
def apps_file(sandbox: Sandbox, tmp_path: Path) -> Path:
    secret = tmp_path / "globex.secret"
    secret.write_text(GLOBEX.client_secret + "\n")
    path = tmp_path / "apps.toml"
    path.write_text(
        f"""
[apps.acme]
client_id = "{ACME.client_id}"
client_secret = "{ACME.client_secret}"
api_url = "{sandbox.url}"
orgs = ["1001", "1002", "1009"]
rate_limit = 30
sinks = ["redis-stream:acme:events", "https://u:pw-in-url@hooks.example/et?secret=crm"]
webhook_secrets = {{ CRM = "{HOOK_KEY}" }}

[apps.globex]
client_id = "{GLOBEX.client_id}"
secret_file = "{secret}"
api_url = "{sandbox.url}"
rate_limit = 50
sinks = "redis-stream:globex:events"

[apps.initech]
client_id = "{ACME.client_id}-initech"
client_secret = "wrong-secret-333"
api_url = "{sandbox.url}"
sinks = "redis-stream:initech:events"
"""
    )
    return path


def run(
    sandbox: Sandbox, redis_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``etbridge ARGS`` as the sandbox's first application (ACME), checked for leaks."""
    proc = run_cli(
        sandbox, redis_url, *args, **{"ETBRIDGE_SINKS": "redis-stream:cli:events", **env}
    )
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_apps_list_shows_each_application_without_secrets(
    sandbox: Sandbox, redis_url: str, apps_file: Path
) -> None:
    proc = run(sandbox, redis_url, "apps", "list", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"3 application(s) from ETBRIDGE_APPS_FILE ({apps_file})" in out
    blocks = {b.splitlines()[0]: b for b in out.split("\n\n")[1:]}
    assert list(blocks) == ["acme", "globex", "initech"]
    acme = blocks["acme"]
    assert f"  api         {sandbox.url}" in acme
    assert "  orgs        1001, 1002, 1009" in acme
    assert "  rate limit  30 per minute" in acme
    assert "redis-stream:acme:events" in acme
    assert "https://u:***@hooks.example/et?secret=***" in acme
    assert "  webhooks    keys CRM (values not shown)" in acme
    assert "secret ***" in acme
    globex = blocks["globex"]
    assert "  orgs        discovery (every 3600s)" in globex
    assert f"secret *** (from {apps_file.parent / 'globex.secret'})" in globex
    assert "  rate limit  50 per minute" in globex


def test_apps_check_tests_each_application_against_its_api(
    sandbox: Sandbox, redis_url: str, apps_file: Path
) -> None:
    before = sandbox.counters()["by_app"]
    proc = run(sandbox, redis_url, "apps", "check", "acme", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 0, proc.stderr
    assert "app       acme" in proc.stdout
    assert f"client id {ACME.client_id}  secret ***" in proc.stdout
    assert "orgs      2: 1001 (" in proc.stdout and "1003" not in proc.stdout
    assert "rate      limit 30 per minute" in proc.stdout
    assert "warning   app acme's orgs lists unknown orgs: 1009" in proc.stdout

    proc = run(sandbox, redis_url, "apps", "check", "globex", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 0, proc.stderr
    assert "orgs      1: 1003 (" in proc.stdout
    assert "rate      limit 10000 per minute" in proc.stdout
    assert "warning" not in proc.stdout

    after = sandbox.counters()["by_app"]
    for app in (ACME, GLOBEX):
        done = after[app.client_id]["token_requests_ok"]
        assert done - before.get(app.client_id, {}).get("token_requests_ok", 0) == 1


def test_apps_check_of_an_application_with_wrong_credentials(
    sandbox: Sandbox, redis_url: str, apps_file: Path
) -> None:
    proc = run(sandbox, redis_url, "apps", "check", "initech", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "token request refused" in line and "invalid_client" in line


def test_apps_check_unknown_name_and_budget_above_the_limit(
    sandbox: Sandbox, redis_url: str, apps_file: Path
) -> None:
    proc = run(sandbox, redis_url, "apps", "check", "nope", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 2
    assert "no application named 'nope' (known: acme, globex, initech)" in proc.stderr
    apps_file.write_text(apps_file.read_text().replace("rate_limit = 30", "rate_limit = 31"))
    proc = run(sandbox, redis_url, "apps", "check", "acme", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 0, proc.stderr
    assert "the budget (31/min) is above the API's limit (30/min)" in proc.stdout


def test_without_the_file_the_single_application(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(sandbox, redis_url, "apps", "list", ETBRIDGE_ORGS="1001")
    assert proc.returncode == 0, proc.stderr
    assert "one application from ETBRIDGE_CLIENT_ID" in proc.stdout
    assert "\ndefault\n" in proc.stdout
    assert "  orgs        1001\n" in proc.stdout
    proc = run(sandbox, redis_url, "apps", "check", "default")
    assert proc.returncode == 0, proc.stderr
    assert "orgs      2: 1001 (" in proc.stdout
    # The same answer as `etbridge check`, but for the "app" line.
    check = run(sandbox, redis_url, "check")
    assert proc.stdout.splitlines()[1:4] == check.stdout.splitlines()[:3]


def test_a_bad_apps_file_is_one_line(sandbox: Sandbox, redis_url: str, apps_file: Path) -> None:
    apps_file.write_text(apps_file.read_text().replace("rate_limit = 50", "rate_limit = 0"))
    for args in (("apps", "list"), ("status",)):
        proc = run(sandbox, redis_url, *args, ETBRIDGE_APPS_FILE=str(apps_file))
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("etbridge: configuration error: ETBRIDGE_APPS_FILE: app 'globex': ")
        assert "rate_limit" in line


def test_apps_reload_bumps_the_generation_of_a_good_file_only(
    sandbox: Sandbox, redis_url: str, apps_file: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    proc = run(sandbox, redis_url, "apps", "reload")
    assert proc.returncode == 2
    assert "ETBRIDGE_APPS_FILE is not set" in proc.stderr
    proc = run(sandbox, redis_url, "apps", "reload", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "reloaded 3 application(s) from ETBRIDGE_APPS_FILE: acme, globex, initech "
    )
    assert appsreload.generation(client) == 1
    apps_file.write_text(apps_file.read_text().replace("rate_limit = 50", "rate_limit = 0"))
    proc = run(sandbox, redis_url, "apps", "reload", ETBRIDGE_APPS_FILE=str(apps_file))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("etbridge: configuration error: ETBRIDGE_APPS_FILE: app 'globex': ")
    assert appsreload.generation(client) == 1
