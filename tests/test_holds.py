"""Deletion holds (holds.py) end to end: the guard holds, the operator approves or rejects
(``etbridge deletions`` as a subprocess), a hold clears when the bookings return.
"""

from __future__ import annotations

import pytest

from etbridge import holds, keys, status
from etbridge.runtime import Runtime
from etbridge.state import OrgState
from tests.support import deletionsafety
from tests.support.deletionsafety import (
    ORG,
    cli,
    gets,
    org_status,
    poller,
    types,
)
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events

# The module's sandbox (two orgs of 60 bookings) and, per test, a runtime on it.
sandbox = deletionsafety.sandbox
rt = deletionsafety.rt


def test_an_empty_listing_is_held_and_cleared_when_the_bookings_return(
    rt: Runtime, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    p = poller(rt)
    p.poll(ORG)
    stored = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count()
    sandbox.glitch(ORG, empty_listings=True)
    before = gets(sandbox)
    with caplog.at_level("WARNING", logger="etbridge.deletions"):
        p.poll(ORG, "sweep")
        p.poll(ORG, "sweep")
    assert gets(sandbox) == before  # held without spending the budget
    assert outbox_events(rt.redis, ORG) == []
    assert OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count() == stored  # no state change
    alerts = [r for r in caplog.records if "deletions held" in r.getMessage()]
    assert len(alerts) == 1, "the warning is sent once per hold"
    assert org_status(rt)["deletions_held"] == stored
    assert f"deletions held: {stored}" in status.render(status.collect(rt.redis, rt.settings))
    sandbox.glitch(ORG, empty_listings=False)
    p.poll(ORG, "sweep")
    assert holds.read(rt.redis, keys.DEFAULT, ORG, "bookings") is None
    assert org_status(rt)["deletions_held"] == 0
    assert outbox_events(rt.redis, ORG) == []


def test_a_mass_deletion_waits_for_the_operator(
    rt: Runtime, sandbox: Sandbox, redis_url: str
) -> None:
    p = poller(rt)
    p.poll(ORG)
    stored = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count()
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
    assert (
        OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").meta()["resync"] == "1"
    )  # a sweep comes soon
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
    stored = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count()
    sandbox.glitch(ORG, drop_fraction=0.5)
    p.poll(ORG, "sweep")
    held = holds.read(rt.redis, keys.DEFAULT, ORG, "bookings")
    assert held is not None and held.reason == "guard" and held.count > 10
    reject = cli(sandbox, redis_url, "deletions", "reject", ORG)
    assert reject.returncode == 0 and "the bookings stay" in reject.stdout
    assert holds.read(rt.redis, keys.DEFAULT, ORG, "bookings") is None
    assert OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count() == stored
    sandbox.glitch(ORG, drop_fraction=0)
    p.poll(ORG, "sweep")
    assert outbox_events(rt.redis, ORG) == []
