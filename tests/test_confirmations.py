"""Lost access (confirmations.py) end to end: kept state, no events, the alert, the return;
and the status fields ``accessible`` / ``inaccessible_since``.
"""

from __future__ import annotations

import json

import pytest

from etbridge import keys
from etbridge import state as state_mod
from etbridge.errors import AccessLost
from etbridge.runtime import Runtime
from etbridge.state import OrgState
from tests.support import deletionsafety
from tests.support.deletionsafety import (
    ORG,
    live_ids,
    org_status,
    poller,
)
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events

# The module's sandbox (two orgs of 60 bookings) and, per test, a runtime on it.
sandbox = deletionsafety.sandbox
rt = deletionsafety.rt


def test_lost_access_keeps_the_state_and_polling_resumes_from_the_watermark(
    rt: Runtime, sandbox: Sandbox
) -> None:
    p = poller(rt)
    p.poll(ORG)
    state = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings")
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
    state_mod.register_org(rt.redis, keys.DEFAULT, ORG)
    stored = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count()
    with caplog.at_level("WARNING", logger="etbridge.deletions"):
        state_mod.mark_removed(rt.redis, keys.DEFAULT, ORG)
    assert any(f"org inaccessible org_id={ORG}" in r.getMessage() for r in caplog.records)
    doc = org_status(rt)
    assert doc["accessible"] is False and doc["removed"] is True
    assert OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").count() == stored
    assert outbox_events(rt.redis, ORG) == []
    state_mod.register_org(rt.redis, keys.DEFAULT, ORG)  # listed again
    assert org_status(rt)["accessible"] is True
