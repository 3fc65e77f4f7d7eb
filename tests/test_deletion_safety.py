"""Deletion safety end to end with the real poller, sandbox and Redis (no fleet).

Confirmation GETs, the listing that lied, the guard's holds and the operator's
decisions (``etbridge deletions`` as a subprocess), lost access and its return,
and the status fields ``deletions_held`` / ``accessible``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from etbridge import changes, holds, status
from etbridge import state as state_mod
from etbridge.errors import AccessLost
from etbridge.poller import Poller
from etbridge.runtime import Runtime
from etbridge.state import OrgState
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events, runtime_for

ORG = "1001"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=60, seed=13, rate_limit=100_000) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Iterator[Runtime]:
    sandbox.reset()
    runtime = runtime_for(sandbox, redis_url, orgs=[ORG, "1002"])
    yield runtime
    runtime.session.close()
    runtime.redis.close()


def poller(rt: Runtime) -> Poller:
    return Poller(rt.redis, rt.settings, rt.api)


def types(rt: Runtime, org: str = ORG) -> Counter[str]:
    return Counter(e["type"].rsplit(".", 1)[-1] for e in outbox_events(rt.redis, org))


def live_ids(sandbox: Sandbox, org: str = ORG) -> list[str]:
    return sorted(sandbox.truth(org)["orgs"][org]["bookings"], key=int)


def gets(sandbox: Sandbox, org: str = ORG) -> int:
    return int(sandbox.counters()["get_requests_by_org"].get(org, 0))


def cli(sandbox: Sandbox, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    environ.update(
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET=sandbox.client_secret,
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL=redis_url,
        ETBRIDGE_ORGS=f"{ORG},1002",
    )
    return subprocess.run(
        [sys.executable, "-m", "etbridge", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stored_equals_truth(rt: Runtime, sandbox: Sandbox) -> bool:
    state = OrgState(rt.redis, ORG, "bookings")
    truth = sandbox.truth(ORG)["orgs"][ORG]["bookings"]
    return state.records(sorted(state.stored_ids())) == {
        i: changes.canonical(r) for i, r in truth.items()
    }


def org_status(rt: Runtime, org: str = ORG) -> dict[str, Any]:
    doc: dict[str, Any] = status.collect(rt.redis, rt.settings)["orgs"][org]
    return doc


def test_a_real_deletion_is_confirmed_then_announced(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.mutate(2, org=ORG, kinds=["delete"])
    before = gets(sandbox)
    (result,) = p.poll(ORG, "sweep")
    assert result.deleted == 2
    assert gets(sandbox) - before == 2  # one confirmation per deletion
    assert types(rt) == {"deleted": 2}
    assert OrgState(rt.redis, ORG, "bookings").stored_ids() == set(live_ids(sandbox))


def test_a_listing_that_leaves_out_a_few_is_corrected_by_the_get(
    rt: Runtime, sandbox: Sandbox
) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.glitch(ORG, drop_fraction=0.1)
    listed = _listed(rt)
    dropped = {i for i in live_ids(sandbox) if i not in listed}
    assert 0 < len(dropped) <= 10, dropped
    # Update bookings until one the listing leaves out has changed: only the GET can see it.
    changed: set[str] = set()
    while not changed & dropped:
        changed.add(sandbox.mutate(1, org=ORG, kinds=["update"])[0]["id"])
    (result,) = p.poll(ORG, "sweep")
    assert result.deleted == 0
    events = outbox_events(rt.redis, ORG)
    assert {e["type"] for e in events} == {"com.eventtemple.booking.updated"}
    assert sorted(e["subject"] for e in events) == sorted(changed)
    assert stored_equals_truth(rt, sandbox)


def _listed(rt: Runtime) -> set[str]:
    return {r["id"] for page in rt.api.pages(ORG) for r in page.data}


def test_an_empty_listing_is_held_and_cleared_when_the_bookings_return(
    rt: Runtime, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    p = poller(rt)
    p.poll(ORG)
    stored = OrgState(rt.redis, ORG, "bookings").count()
    sandbox.glitch(ORG, empty_listings=True)
    before = gets(sandbox)
    with caplog.at_level("WARNING", logger="etbridge.deletions"):
        p.poll(ORG, "sweep")
        p.poll(ORG, "sweep")
    assert gets(sandbox) == before  # held without spending the budget
    assert outbox_events(rt.redis, ORG) == []
    assert OrgState(rt.redis, ORG, "bookings").count() == stored  # no state change
    alerts = [r for r in caplog.records if "deletions held" in r.getMessage()]
    assert len(alerts) == 1, "the warning is sent once per hold"
    assert org_status(rt)["deletions_held"] == stored
    assert f"deletions held: {stored}" in status.render(status.collect(rt.redis, rt.settings))
    sandbox.glitch(ORG, empty_listings=False)
    p.poll(ORG, "sweep")
    assert holds.read(rt.redis, ORG, "bookings") is None
    assert org_status(rt)["deletions_held"] == 0
    assert outbox_events(rt.redis, ORG) == []


def test_a_mass_deletion_waits_for_the_operator(
    rt: Runtime, sandbox: Sandbox, redis_url: str
) -> None:
    p = poller(rt)
    p.poll(ORG)
    stored = OrgState(rt.redis, ORG, "bookings").count()
    deleted = {m["id"] for m in sandbox.mutate(20, org=ORG, kinds=["delete"])}
    p.poll(ORG, "sweep")
    assert "deleted" not in types(rt)
    listing = cli(sandbox, redis_url, "deletions", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith(f"{ORG}  bookings  held 20 of {stored} stored  reason=guard")
    one = cli(sandbox, redis_url, "deletions", "list", ORG).stdout
    assert set(one.split("ids: ", 1)[1].split()) == deleted
    approve = cli(sandbox, redis_url, "deletions", "approve", ORG)
    assert approve.returncode == 0 and "20 held deletions approved" in approve.stdout
    assert OrgState(rt.redis, ORG, "bookings").meta()["resync"] == "1"  # a sweep comes soon
    p.poll(ORG)  # the requested sweep
    events = outbox_events(rt.redis, ORG)
    assert {e["subject"] for e in events} == deleted
    assert types(rt) == {"deleted": 20}
    assert cli(sandbox, redis_url, "deletions", "list").stdout.strip() == "no deletions held"
    nothing = cli(sandbox, redis_url, "deletions", "approve", ORG)
    assert nothing.returncode == 1 and "no held deletions" in nothing.stderr


def test_a_rejected_hold_keeps_the_bookings(rt: Runtime, sandbox: Sandbox, redis_url: str) -> None:
    p = poller(rt)
    p.poll(ORG)
    stored = OrgState(rt.redis, ORG, "bookings").count()
    sandbox.glitch(ORG, drop_fraction=0.5)
    p.poll(ORG, "sweep")
    held = holds.read(rt.redis, ORG, "bookings")
    assert held is not None and held.reason == "guard" and held.count > 10
    reject = cli(sandbox, redis_url, "deletions", "reject", ORG)
    assert reject.returncode == 0 and "the bookings stay" in reject.stdout
    assert holds.read(rt.redis, ORG, "bookings") is None
    assert OrgState(rt.redis, ORG, "bookings").count() == stored
    sandbox.glitch(ORG, drop_fraction=0)
    p.poll(ORG, "sweep")
    assert outbox_events(rt.redis, ORG) == []


def test_many_deletions_in_a_big_org_cost_one_sample(sandbox: Sandbox, redis_url: str) -> None:
    sandbox.reset()
    rt = runtime_for(sandbox, redis_url, delete_guard="50%,1000", orgs=[ORG])
    p = poller(rt)
    p.poll(ORG)
    sandbox.mutate(15, org=ORG, kinds=["delete"])
    before = gets(sandbox)
    (result,) = p.poll(ORG, "sweep")
    assert gets(sandbox) - before == 5
    assert result.deleted == 15 and types(rt) == {"deleted": 15}
    # A thinned listing: the sample finds the bookings, nothing is announced.
    sandbox.glitch(ORG, drop_fraction=0.4)
    before = gets(sandbox)
    (result,) = p.poll(ORG, "sweep")
    assert gets(sandbox) - before == 5
    assert result.deleted == 0 and types(rt) == {"deleted": 15}
    assert org_status(rt)["deletions_pending"] > 0
    sandbox.glitch(ORG, drop_fraction=0)
    p.poll(ORG, "sweep")
    assert org_status(rt)["deletions_pending"] == 0
    assert OrgState(rt.redis, ORG, "bookings").stored_ids() == set(live_ids(sandbox))


def test_lost_access_keeps_the_state_and_polling_resumes_from_the_watermark(
    rt: Runtime, sandbox: Sandbox
) -> None:
    p = poller(rt)
    p.poll(ORG)
    state = OrgState(rt.redis, ORG, "bookings")
    watermark = state.meta()["watermark"]
    sandbox.glitch(ORG, forbidden=True)
    for mode in ("incremental", "sweep", "sweep"):
        with pytest.raises(AccessLost):
            p.poll(ORG, mode)
    assert outbox_events(rt.redis, ORG) == []
    assert state.count() == len(live_ids(sandbox)) and state.meta()["watermark"] == watermark
    doc = org_status(rt)
    assert doc["accessible"] is False and doc["inaccessible_since"]
    assert org_status(rt, "1002")["accessible"] is True
    changed = sandbox.mutate(1, org=ORG, kinds=["update"])[0]["id"]
    sandbox.glitch(ORG, forbidden=False)
    (result,) = p.poll(ORG)
    assert result.mode == "incremental"
    assert [e["subject"] for e in outbox_events(rt.redis, ORG)] == [changed]
    assert org_status(rt)["accessible"] is True
    json.dumps(org_status(rt))  # JSON-ready


def test_an_org_never_polled_that_answers_403_is_an_error_not_lost_access(
    rt: Runtime, sandbox: Sandbox
) -> None:
    sandbox.glitch("1002", forbidden=True)
    # Any error but AccessLost: which one the poller raises for it is not the point.
    with pytest.raises(Exception) as info:  # noqa: PT011
        poller(rt).poll("1002")
    assert not isinstance(info.value, AccessLost)
    assert org_status(rt, "1002")["accessible"] is True


def test_an_org_gone_from_discovery_is_inaccessible_and_keeps_its_state(
    rt: Runtime, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    poller(rt).poll(ORG)
    state_mod.register_org(rt.redis, ORG)
    stored = OrgState(rt.redis, ORG, "bookings").count()
    with caplog.at_level("WARNING", logger="etbridge.deletions"):
        state_mod.mark_removed(rt.redis, ORG)
    assert any(f"org inaccessible org_id={ORG}" in r.getMessage() for r in caplog.records)
    doc = org_status(rt)
    assert doc["accessible"] is False and doc["removed"] is True
    assert OrgState(rt.redis, ORG, "bookings").count() == stored
    assert outbox_events(rt.redis, ORG) == []
    state_mod.register_org(rt.redis, ORG)  # listed again
    assert org_status(rt)["accessible"] is True
