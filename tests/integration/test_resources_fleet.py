"""Two resources (bookings and contacts) with real workers, beat and the sandbox.

Every change of both is detected (graded against the sandbox's truth), status shows both
per org, and while ``/v2/contacts`` fails bookings keep being polled; contacts catch up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from etbridge.redisserver import free_port
from tests.support.cli import etbridge_command
from tests.support.fleet import fleet, fleet_env, read_sink, wait_for
from tests.support.grader import grade
from tests.support.sandbox import Sandbox
from tests.test_metrics import _scrape

pytestmark = pytest.mark.slow

ORGS = ["1001", "1002", "1003"]
RESOURCES = ("bookings", "contacts")


def _of(resource: str, events: list[dict[str, Any]], truth: dict[str, Any]) -> list[str]:
    """Problems of one resource's events against its part of the truth."""
    mine = [e for e in events if e["data"].get("resource") == resource]
    deleted = "deleted" if resource == "bookings" else "deleted_contacts"
    view = {
        "orgs": {
            org_id: {"bookings": org[resource], "deleted": org[deleted]}
            for org_id, org in truth["orgs"].items()
        }
    }
    return [f"{resource}: {p}" for p in grade(mine, view)]


def _problems(client: redis.Redis, sb: Sandbox) -> dict[str, list[str]]:
    events, truth = read_sink(client), sb.truth()
    return {res: _of(res, events, truth) for res in RESOURCES}


def _clean(client: redis.Redis, sb: Sandbox, *resources: str) -> bool:
    problems = _problems(client, sb)
    return not any(problems[r] for r in resources)


def _status(env: dict[str, str], *args: str) -> str:
    return etbridge_command(env, "status", *args).stdout


def _status_doc(env: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_status(env, "--json"))
    return doc


def test_two_resources_detected_and_one_failing_does_not_stop_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    port = free_port()
    with Sandbox.start(orgs=3, bookings=20, seed=41, rate_limit=600, contacts=15) as sb:
        env = fleet_env(
            sb,
            redis_url,
            ETBRIDGE_ORGS=",".join(ORGS),
            ETBRIDGE_RESOURCES=",".join(RESOURCES),
            ETBRIDGE_EMIT_BASELINE="true",
            ETBRIDGE_RATE_LIMIT="600",
            ETBRIDGE_SWEEP_INTERVAL="15",
            ETBRIDGE_METRICS_PORT=str(port),
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with fleet(env, tmp_path) as f:
            f.worker(concurrency=2)
            f.beat()
            wait_for(lambda: _clean(client, sb, *RESOURCES), 120, "both baselines")

            # Churn over both collections; every change of both must arrive.
            start = len(sb.log())
            sb.churn(3.0, resource="all")
            # Churn runs while polling does, until both collections have had ten changes.
            wait_for(
                lambda: all(
                    sum(e["resource"] == r for e in sb.log(start)) >= 10 for r in RESOURCES
                ),
                60,
                "ten changes of each collection",
            )
            sb.churn(0.0)
            wait_for(lambda: _clean(client, sb, *RESOURCES), 120, "the churn of both")

            contact_events = [e for e in read_sink(client) if e["data"]["resource"] == "contacts"]
            assert contact_events
            for event in contact_events:
                assert event["type"].startswith("com.eventtemple.contact.")
                assert event["source"] == f"/orgs/{event['orgid']}/contacts"
            doc, truth, scrape = _status_doc(env), sb.truth(), _scrape(port)
            for org_id in ORGS:
                units = doc["orgs"][org_id]["resources"]
                assert set(units) == set(RESOURCES)
                for res in RESOURCES:
                    assert units[res]["baselined"], units
                    live = len(truth["orgs"][org_id][res])
                    assert units[res]["records"] == live, (org_id, res, units[res])
                    gauge = f"etbridge_org_records{{org_id={org_id},resource={res}}}"
                    assert scrape[gauge] == live, gauge

            # Contacts fail; bookings keep being polled and their changes detected.
            sb.faults(contacts_error_500=1.0)
            for org_id in ORGS:
                sb.mutate(2, org=org_id, kinds=["create", "update"], resource="contacts")
            polled = sb.counters()["list_requests_by_resource"].get("bookings", 0)
            for org_id in ORGS:
                sb.mutate(2, org=org_id, kinds=["create", "update"], resource="bookings")
            t0 = time.monotonic()
            wait_for(lambda: _clean(client, sb, "bookings"), 60, "bookings while contacts fail")
            print(f"bookings detected {time.monotonic() - t0:.1f}s after their changes")
            wait_for(
                lambda: (
                    sb.counters()["list_requests_by_resource"].get("bookings", 0)
                    >= polled + 2 * len(ORGS)
                ),
                60,
                "bookings still polled while contacts fail",
            )
            assert _problems(client, sb)["contacts"], "contacts changed but could not be read"
            assert sb.counters()["faults_served"].get("contacts_error_500", 0) > 0
            failing, scrape = _status_doc(env), _scrape(port)
            text = _status(env).splitlines()
            contact_rows = [line for line in text if line.startswith("  contacts ")]
            assert len(contact_rows) == len(ORGS), text
            assert any("HTTP 500" in line for line in contact_rows), text
            assert sum("[bookings]" in line for line in text) == len(ORGS), text
            units = {(o, r): failing["orgs"][o]["resources"][r] for o in ORGS for r in RESOURCES}
            assert any(units[(o, "contacts")]["last_error"] for o in ORGS), units
            assert not any(units[(o, "bookings")]["last_error"] for o in ORGS), units
            errors = {
                (o, r): scrape.get(f"etbridge_org_poll_errors{{org_id={o},resource={r}}}", 0)
                for o in ORGS
                for r in RESOURCES
            }
            assert any(errors[(o, "contacts")] > 0 for o in ORGS), errors

            # The failure ends: contacts catch up, and nothing of bookings was lost.
            sb.faults(contacts_error_500=0.0)
            wait_for(lambda: _clean(client, sb, *RESOURCES), 120, "contacts catching up")
