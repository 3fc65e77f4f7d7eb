"""``/readyz`` and the Prometheus metrics with ETBRIDGE_APPS_FILE, on a real Redis and sandbox.

Readiness checks each application's token (the single application's rule per
application, ``ok`` when all are); counters of an application carry an
``app`` label beside the single application's unchanged series (served from
the multiprocess files a child wrote); the gauges read each application's keys.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from etbridge import health, metrics, runtime
from etbridge.errors import AuthenticationError, TransportError
from etbridge.settings import Settings
from tests.support.sandbox import Sandbox, SandboxApp
from tests.test_status import make_settings

GOOD = SandboxApp("good-client", "good-secret-1234", orgs=("1001",))
WRONG = SandboxApp("wrong-client", "wrong-secret-1234", orgs=("1002",))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=2, seed=18, apps=[GOOD, WRONG]) as sb:
        yield sb


def apps_settings(redis_url: str, tmp_path: Path, api_url: str, down: str) -> Settings:
    path = tmp_path / "apps.toml"
    tables = [
        ("good", GOOD.client_id, GOOD.client_secret, api_url, "1001"),
        ("wrong", WRONG.client_id, "not-the-secret-99", api_url, "1002"),
        ("down", "down-client", "down-secret-1234", down, "1003"),
    ]
    path.write_text(
        "".join(
            f'[apps.{name}]\nclient_id = "{cid}"\nclient_secret = "{secret}"\n'
            f'api_url = "{url}"\norgs = ["{org}"]\nsinks = "redis-stream:{name}:events"\n'
            for name, cid, secret, url, org in tables
        )
    )
    return make_settings(redis_url, apps_file=str(path))


def fetch(settings: Settings, name: str) -> None:
    """Fetch the application's token as a poll would (the wrong and down ones fail)."""
    if name == "good":
        runtime.get(settings, name).tokens.get()
        return
    with pytest.raises((AuthenticationError, TransportError)):
        runtime.get(settings, name).tokens.get()


def test_readyz_checks_each_applications_token(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    settings = apps_settings(redis_url, tmp_path, sandbox.url, "http://127.0.0.1:9")
    h = health.Health(settings, "worker")
    # No token fetched yet: each application "none", ready (a probe never fetches one).
    check = health._guarded(h._check_token)
    assert check["ok"] is True
    assert {n: c["state"] for n, c in check["apps"].items()} == {
        "good": "none",
        "wrong": "none",
        "down": "none",
    }
    fetch(settings, "good")
    fetch(settings, "wrong")
    check = health._guarded(h._check_token)
    # The wrong secret is a known invalid_client: it cannot become ready, so it does not count.
    assert check["ok"] is True, check
    assert check["apps"]["good"]["state"] == "valid"
    assert check["apps"]["wrong"] == {"ok": True, "state": "invalid_client"}
    # An application whose token endpoint is unreachable makes the process not ready.
    fetch(settings, "down")
    check = health._guarded(h._check_token)
    assert check["ok"] is False
    assert check["failing"] == ["down"]
    assert check["apps"]["down"]["ok"] is False
    text = str(check)
    for secret in (GOOD.client_secret, "not-the-secret-99", "down-secret-1234"):
        assert secret not in text
    # Without the file: the single application's check, unchanged.
    single = health._guarded(health.Health(make_settings(redis_url), "worker")._check_token)
    assert set(single) <= {"ok", "state", "expires_in"}


def test_gauges_read_each_applications_keys(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    settings = apps_settings(redis_url, tmp_path, sandbox.url, "http://127.0.0.1:9")
    fetch(settings, "wrong")
    families = {m.name: m for m in metrics.StatusCollector(settings).collect()}
    assert [s.labels for s in families["etbridge_status_up"].samples] == [{}]
    limits = {s.labels["app"]: s.value for s in families["etbridge_rate_budget_limit"].samples}
    assert limits == {"good": 100, "wrong": 100, "down": 100}
    pending = {s.labels["app"]: s.labels for s in families["etbridge_outbox_pending"].samples}
    assert set(pending) == {"good", "wrong", "down"}
    errors = [s.labels for s in families["etbridge_token_error"].samples]
    assert errors == [{"app": "wrong", "code": "invalid_client"}]


CHILD = """
from etbridge import metrics
from etbridge.outbox import DeliveryResult, Outcome
from etbridge.poller import PollResult
from tests.test_status import make_settings

ok = PollResult("1001", "bookings", "incremental", pages=2, events=1, ms=10.0)
ok.counts = {"updated": 1}
metrics.record_polls([ok])
metrics.record_polls([ok], "acme")
metrics.record_poll_failure("sweep", "auth_error", "acme")
token = ("et.example", "/oauth/token")
metrics.record_response("https://et.example/oauth/token", 200, token, "acme")
metrics.record_response("https://et.example/v2/bookings/4711", 429, token, "acme")
metrics.record_response("https://et.example/v2/bookings", 200, token)
settings = make_settings("redis://127.0.0.1:1")
sink = settings.sinks[0].name
metrics.record_delivery(DeliveryResult("1001", sink, outcome=Outcome.CAUGHT_UP, delivered=3),
                        settings)
settings._app = "acme"
metrics.record_delivery(DeliveryResult("1001", sink, outcome=Outcome.CAUGHT_UP, delivered=2),
                        settings)
"""


def test_counters_carry_the_app_label_single_series_unchanged(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(tmp_path))  # type: ignore[no-untyped-call]
    text = generate_latest(reg).decode()
    lines = set(text.splitlines())
    expected = [
        # The single application's series: the labels of before, no app.
        'etbridge_polls_total{mode="incremental",outcome="ok"} 1.0',
        'etbridge_api_requests_total{endpoint="/v2/bookings",status="200"} 1.0',
        # An application's: app first, the rest unchanged.
        'etbridge_polls_total{app="acme",mode="incremental",outcome="ok"} 1.0',
        'etbridge_polls_total{app="acme",mode="sweep",outcome="auth_error"} 1.0',
        'etbridge_poll_pages_total{app="acme",mode="incremental"} 2.0',
        'etbridge_changes_total{app="acme",type="updated"} 1.0',
        'etbridge_token_requests_total{app="acme",status="200"} 1.0',
        'etbridge_api_requests_total{app="acme",endpoint="/v2/bookings/:id",status="429"} 1.0',
        'etbridge_api_rate_limited_total{app="acme",endpoint="/v2/bookings/:id"} 1.0',
    ]
    assert [line for line in expected if line not in lines] == [], text
    delivered = sorted(line for line in lines if line.startswith("etbridge_events_delivered"))
    assert len(delivered) == 2, delivered
    assert delivered[0].startswith('etbridge_events_delivered_total{app="acme",kind=')
    assert delivered[0].endswith(" 2.0") and delivered[1].endswith(" 3.0")
    assert "app=" not in delivered[1]
    # One HELP/TYPE per family: both label sets under one name.
    assert text.count("# TYPE etbridge_polls_total counter") == 1
