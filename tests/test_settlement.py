"""The end of a complete sweep (settlement.py) with the real poller, sandbox and Redis:
candidates confirmed by GET, announced or corrected, sampled in a big org.
"""

from __future__ import annotations

from etbridge import keys
from etbridge.runtime import Runtime
from etbridge.state import OrgState
from tests.support import deletionsafety
from tests.support.deletionsafety import (
    ORG,
    gets,
    listed_ids,
    live_ids,
    org_status,
    poller,
    stored_equals_truth,
    types,
)
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events, runtime_for

# The module's sandbox (two orgs of 60 bookings) and, per test, a runtime on it.
sandbox = deletionsafety.sandbox
rt = deletionsafety.rt


def test_a_real_deletion_is_confirmed_then_announced(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.mutate(2, org=ORG, kinds=["delete"])
    before = gets(sandbox)
    (result,) = p.poll(ORG, "sweep")
    assert result.deleted == 2
    assert gets(sandbox) - before == 2  # one confirmation per deletion
    assert types(rt) == {"deleted": 2}
    assert OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").stored_ids() == set(live_ids(sandbox))


def test_a_listing_that_leaves_out_a_few_is_corrected_by_the_get(
    rt: Runtime, sandbox: Sandbox
) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.glitch(ORG, drop_fraction=0.1)
    listed = listed_ids(rt)
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
    assert OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").stored_ids() == set(live_ids(sandbox))
