"""Prometheus metrics: recording edges, fleet gauges, a real prefork worker serving them."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from etbridge import metrics
from etbridge.outbox import DeliveryResult
from etbridge.outbox.outcomes import Outcome
from etbridge.poller import PollResult
from etbridge.redisserver import free_port
from etbridge.runtime import Runtime
from etbridge.settings import Settings, load_settings
from tests.support.fleet import Proc, fleet, fleet_env, read_sink, wait_for
from tests.support.sandbox import Sandbox


def sample(name: str, **labels: str) -> float:
    """A value of the test process's default registry (0 when not recorded yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _settings(sb: Sandbox, redis_url: str, **extra: object) -> Settings:
    return load_settings(
        _env_file=None,
        client_id=sb.client_id,
        client_secret=sb.client_secret,
        api_url=sb.url,
        redis_url=redis_url,
        **extra,
    )


def test_endpoint_labels_replace_ids() -> None:
    assert metrics.endpoint("/v2/bookings") == "/v2/bookings"
    assert metrics.endpoint("/v2/bookings/100042") == "/v2/bookings/:id"
    assert metrics.endpoint("/v2/x/7e1c5a52-2f0b-4c8e-9d1b-1f2e3d4c5b6a") == "/v2/x/:id"
    assert metrics.endpoint("/") == "/"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=5, rate_limit=600) as sb:
        yield sb


def test_the_session_hook_counts_api_and_token_requests(sandbox: Sandbox, redis_url: str) -> None:
    rt = Runtime(_settings(sandbox, redis_url, rate_limit=600))
    orgs_ok = dict(endpoint="/v2/organizations", status="200")
    before = {
        "token": sample("etbridge_token_requests_total", status="200"),
        "orgs": sample("etbridge_api_requests_total", **orgs_ok),
        "401": sample("etbridge_api_requests_total", endpoint="/v2/organizations", status="401"),
        "429": sample("etbridge_api_rate_limited_total", endpoint="/v2/organizations"),
        "bookings": sample("etbridge_api_requests_total", endpoint="/v2/bookings", status="200"),
    }
    rt.api.organizations()
    assert sample("etbridge_token_requests_total", status="200") == before["token"] + 1
    assert sample("etbridge_api_requests_total", **orgs_ok) == before["orgs"] + 1
    # A 429 that the client retries: both answers are counted, the 429 twice over.
    sandbox.force_429(1, retry_after=1)
    rt.api.organizations()
    assert sample("etbridge_api_rate_limited_total", endpoint="/v2/organizations") == (
        before["429"] + 1
    )
    assert sample("etbridge_api_requests_total", **orgs_ok) == before["orgs"] + 2
    # A revoked token: BearerAuth's retried 401 is counted, and the second token request.
    sandbox.revoke_tokens()
    rt.api.organizations()
    assert (
        sample("etbridge_api_requests_total", endpoint="/v2/organizations", status="401")
        == before["401"] + 1
    )
    assert sample("etbridge_token_requests_total", status="200") == before["token"] + 2
    list(rt.api.pages("1001", "bookings", page_size=100))
    assert sample("etbridge_api_requests_total", endpoint="/v2/bookings", status="200") == (
        before["bookings"] + 1
    )
    counters = sandbox.counters()
    assert counters["token_requests"] == 2


def test_token_refusals_are_counted_by_status(sandbox: Sandbox, redis_url: str) -> None:
    settings = load_settings(
        _env_file=None,
        client_id=sandbox.client_id,
        client_secret="wrong-secret",
        api_url=sandbox.url,
        redis_url=redis_url,
    )
    before = sample("etbridge_token_requests_total", status="401")
    rt = Runtime(settings)
    with pytest.raises(Exception, match="invalid_client"):
        rt.api.organizations()
    assert sample("etbridge_token_requests_total", status="401") == before + 1


def test_polls_and_deliveries_are_counted() -> None:
    ok = PollResult("1001", "bookings", "incremental", pages=3, events=4, ms=250.0)
    ok.counts = {"created": 1, "updated": 3}
    skipped = PollResult("1001", "bookings", "sweep", skipped="leased")
    before = {
        "ok": sample("etbridge_polls_total", mode="incremental", outcome="ok"),
        "skipped": sample("etbridge_polls_total", mode="sweep", outcome="skipped"),
        "pages": sample("etbridge_poll_pages_total", mode="incremental"),
        "updated": sample("etbridge_changes_total", type="updated"),
        "count": sample("etbridge_poll_duration_seconds_count", mode="incremental"),
        "failed": sample("etbridge_polls_total", mode="sweep", outcome="auth_error"),
    }
    metrics.record_polls([ok])
    metrics.record_polls([skipped])
    metrics.record_poll_failure("sweep", "auth_error")
    assert sample("etbridge_polls_total", mode="incremental", outcome="ok") == before["ok"] + 1
    assert sample("etbridge_polls_total", mode="sweep", outcome="skipped") == before["skipped"] + 1
    assert sample("etbridge_poll_pages_total", mode="incremental") == before["pages"] + 3
    assert sample("etbridge_changes_total", type="updated") == before["updated"] + 3
    assert sample("etbridge_poll_duration_seconds_count", mode="incremental") == before["count"] + 1
    assert (
        sample("etbridge_polls_total", mode="sweep", outcome="auth_error") == before["failed"] + 1
    )

    settings = load_settings(_env_file=None, client_id="c", client_secret="s")
    sink = settings.sinks[0]
    labels = dict(sink=sink.name, kind="redis-stream")
    d0 = sample("etbridge_events_delivered_total", **labels)
    r0 = sample("etbridge_deliveries_total", **labels, outcome="retry")
    metrics.record_delivery(
        DeliveryResult("1001", sink.name, outcome=Outcome.RETRY, delivered=5), settings
    )
    assert sample("etbridge_events_delivered_total", **labels) == d0 + 5
    assert sample("etbridge_deliveries_total", **labels, outcome="retry") == r0 + 1


def test_fleet_gauges_come_from_status(redis_url: str, r: redis.Redis) -> None:
    settings = load_settings(
        _env_file=None, client_id="c", client_secret="s", redis_url=redis_url, orgs=["1001"]
    )
    families = {m.name: m for m in metrics.StatusCollector(settings).collect()}
    assert families["etbridge_status_up"].samples[0].value == 1.0
    assert families["etbridge_rate_budget_limit"].samples[0].value == 100
    assert families["etbridge_outbox_pending"].samples[0].labels["kind"] == "redis-stream"
    assert families["etbridge_token_expires_in_seconds"].samples[0].value < 0  # no token yet
    assert set(metrics.FLEET_GAUGES) >= set(families)
    r.hset("etb:{org:1001}:meta:bookings", mapping={"last_poll_at": str(time.time() - 42)})
    families = {m.name: m for m in metrics.StatusCollector(settings).collect()}
    lag = families["etbridge_org_lag_seconds"].samples[0]
    assert lag.labels == {"org_id": "1001", "resource": "bookings"} and 41 <= lag.value < 60

    down = load_settings(
        _env_file=None, client_id="c", client_secret="s", redis_url="redis://127.0.0.1:1/0"
    )
    families = {m.name: m for m in metrics.StatusCollector(down).collect()}
    assert families["etbridge_status_up"].samples[0].value == 0.0


def test_dashboard_uses_only_metrics_that_exist() -> None:
    path = Path(__file__).resolve().parent.parent / "docker" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    known = set(metrics.FLEET_GAUGES)
    for name in metrics.RECORDED:
        known |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    used = {n for e in exprs for n in re.findall(r"\betbridge_[a-z_]+", e)}
    assert used <= known, used - known
    # Every metric is on the dashboard.
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used} | used
    assert set(metrics.RECORDED) | set(metrics.FLEET_GAUGES) <= bases


# --- a real prefork worker serving the sum of its children ---------------------------------


def _scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def _total(scrape: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v for k, v in scrape.items() if k.startswith(name + "{") and all(w in k for w in want)
    )


@pytest.mark.slow
def test_prefork_worker_serves_the_sum_of_its_children(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    client = redis.Redis.from_url(redis_url)
    with Sandbox.start(orgs=3, bookings=10, rate_limit=6000, churn=3) as sb:
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_METRICS_PORT=str(port),
            ETBRIDGE_RATE_LIMIT="6000",
            ETBRIDGE_POLL_INTERVAL="1",
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with fleet(env, tmp_path) as f:
            # Children recycled every few tasks: dead children's counts must stay in the sum.
            worker = Proc(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "etbridge.worker",
                    "worker",
                    "--concurrency",
                    "2",
                    "--max-tasks-per-child",
                    "5",
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env,
                tmp_path,
            )
            f.procs.append(worker)
            beat = f.beat()  # beat gets the same port setting and must not serve it
            wait_for(lambda: len(read_sink(client)) >= 10, 60, "events in the sink")
            sb.churn(0)
            beat.stop()

            # Quiet: no more tasks, the counts stand still.
            def settled() -> dict[str, float] | None:
                first = _scrape(port)
                time.sleep(2)
                second = _scrape(port)
                done = worker.output().count("poll done")
                keys = ("etbridge_polls_total", "etbridge_api_requests_total")
                same = all(_total(first, k) == _total(second, k) for k in keys)
                return second if same and _total(second, "etbridge_polls_total") >= done else None

            scrape = wait_for(settled, 60, "the worker to go quiet", interval=0.5)
            log = worker.output()
            counters = sb.counters()
            match = re.search(r"metrics served on port=\d+ dir=(\S+)", log)
            assert match, log[-3000:]
            multiproc_dir = Path(match.group(1).rstrip('"'))
            pids = {p.name.rsplit("_", 1)[-1] for p in multiproc_dir.glob("counter_*.db")}
        assert not multiproc_dir.exists(), "the worker left its metrics directory behind"
    assert len(pids) >= 3, f"children were recycled, so more than two wrote counts: {pids}"
    assert "metrics served" not in beat.output()
    assert _total(scrape, "etbridge_polls_total", outcome="ok") == log.count("poll done")
    assert _total(scrape, "etbridge_api_requests_total") == counters["api_requests"]
    assert _total(scrape, "etbridge_token_requests_total") == counters["token_requests"] == 1
    assert _total(scrape, "etbridge_changes_total") >= 10
    assert _total(scrape, "etbridge_events_delivered_total") >= 10
    assert _total(scrape, "etbridge_poll_duration_seconds_count") == log.count("poll done")
    for org in ("1001", "1002", "1003"):
        assert f"etbridge_org_lag_seconds{{org_id={org},resource=bookings}}" in scrape
    assert scrape["etbridge_rate_budget_limit{}"] == 6000
    assert scrape["etbridge_status_up{}"] == 1
