"""Generated data, the seeded mutation engine, churn, truth/log/counters, orgs and schema."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from tests.support.sandbox import Sandbox, SandboxError

TIMEOUT = 30
ORG = "1001"
Sessions = Callable[..., requests.Session]
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def epoch(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def last_seq(sb: Sandbox) -> int:
    entries = sb.log()
    return int(entries[-1]["seq"]) if entries else 0


def assert_quiet(sb: Sandbox, seq: int, seconds: float = 0.5) -> None:
    """Stopped churn stays stopped: no mutation arrives while we keep looking a while."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert last_seq(sb) == seq
        time.sleep(0.05)


# ------------------------------------------------------------------ generated data


def test_initial_bookings_look_real(sandbox: Sandbox) -> None:
    truth = sandbox.truth()
    generated_at = truth["generated_at"]
    bookings = [b for org in truth["orgs"].values() for b in org["bookings"].values()]
    assert len(bookings) >= 3 * 100
    ids = [int(b["id"]) for b in bookings]
    assert len(set(ids)) == len(ids)  # unique across orgs
    for b in bookings:
        a = b["attributes"]
        assert b["type"] == "bookings"
        assert a["status"] in {"lead", "tentative", "definite", "lost"}
        assert (
            re.fullmatch(r"\d{4}-\d\d-\d\d", a["start_date"]) and a["end_date"] >= a["start_date"]
        )
        assert re.fullmatch(r"\d\d:\d\d", a["start_time"]) and re.fullmatch(
            r"\d\d:\d\d", a["end_time"]
        )
        assert isinstance(a["guest_count"], int) and a["guest_count"] > 0
        assert re.fullmatch(r"\d+\.\d\d", a["total_amount"])
        assert STAMP.fullmatch(a["created_at"]) and STAMP.fullmatch(a["updated_at"])
        assert a["created_at"] <= a["updated_at"]
        assert b["relationships"]["account"]["data"]["type"] == "accounts"
        assert b["relationships"]["owner"]["data"]["type"] == "users"
    initial = [b for b in bookings if epoch(b["attributes"]["created_at"]) < generated_at]
    assert len(initial) > 250
    # Ids follow creation time across orgs.
    by_id = sorted(initial, key=lambda b: int(b["id"]))
    created = [b["attributes"]["created_at"] for b in by_id]
    assert created == sorted(created)
    # Many bookings share an updated_at second.
    assert len({b["attributes"]["updated_at"] for b in initial}) < len(initial) * 0.8
    spread = {b["attributes"]["updated_at"][:10] for b in initial}
    assert len(spread) > 5  # over several past days
    assert any(not b["attributes"]["notes"].isascii() for b in bookings)
    assert any(b["relationships"]["contact"]["data"] is None for b in bookings)
    assert any(b["relationships"]["contact"]["data"] is not None for b in bookings)


# ------------------------------------------------------------------- mutation kinds


def test_each_mutation_kind(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    before = sandbox.truth(ORG)["orgs"][ORG]["bookings"]

    (created,) = sandbox.mutate(1, org=ORG, kinds=["create"])
    assert created["kind"] == "create" and created["org"] == ORG
    assert int(created["id"]) > max(int(i) for i in before)
    resource = session.get(f"{url}/{created['id']}", timeout=TIMEOUT).json()["data"]
    assert resource["attributes"]["created_at"] == resource["attributes"]["updated_at"]
    assert resource["attributes"]["updated_at"] == created["updated_at"]
    assert set(created["fields"]) >= {"name", "status", "updated_at", "account"}

    (touched,) = sandbox.mutate(1, org=ORG, kinds=["touch"])
    assert touched["fields"] == ["updated_at"]
    after = session.get(f"{url}/{touched['id']}", timeout=TIMEOUT).json()["data"]
    old = before.get(touched["id"], resource)
    assert after["attributes"]["updated_at"] == touched["updated_at"]
    assert {k: v for k, v in after["attributes"].items() if k != "updated_at"} == {
        k: v for k, v in old["attributes"].items() if k != "updated_at"
    }
    assert after["relationships"] == old["relationships"]

    for _ in range(5):
        current = sandbox.truth(ORG)["orgs"][ORG]["bookings"]
        (updated,) = sandbox.mutate(1, org=ORG, kinds=["update"])
        new = session.get(f"{url}/{updated['id']}", timeout=TIMEOUT).json()["data"]
        old = current[updated["id"]]
        changed = {k for k in new["attributes"] if new["attributes"][k] != old["attributes"][k]}
        changed |= {
            k for k in new["relationships"] if new["relationships"][k] != old["relationships"][k]
        }
        # The log names exactly what changed (updated_at may stay within one second).
        assert changed - {"updated_at"} == set(updated["fields"]) - {"updated_at"}
        assert "updated_at" in updated["fields"] and len(updated["fields"]) >= 2

    (deleted,) = sandbox.mutate(1, org=ORG, kinds=["delete"])
    assert deleted["fields"] == [] and deleted["updated_at"] is None
    assert session.get(f"{url}/{deleted['id']}", timeout=TIMEOUT).status_code == 404
    truth = sandbox.truth(ORG)["orgs"][ORG]
    assert deleted["id"] not in truth["bookings"]
    assert deleted["id"] in truth["deleted"]


def test_mutations_set_updated_at_to_the_current_second(sandbox: Sandbox) -> None:
    start = int(time.time())
    entries = sandbox.mutate(40, org=ORG, kinds=["create", "update", "touch"])
    end = int(time.time())
    for entry in entries:
        stamp = epoch(entry["updated_at"])
        assert start - 1 <= stamp <= end + 1
        assert int(entry["at"]) - 1 <= stamp <= int(entry["at"])
    seqs = [e["seq"] for e in entries]
    assert seqs == list(range(seqs[0], seqs[0] + 40))


def test_mutate_spreads_over_orgs_and_validates(sandbox: Sandbox) -> None:
    entries = sandbox.mutate(60)
    assert len({e["org"] for e in entries}) == 3
    assert {e["kind"] for e in entries} == {"create", "update", "delete", "touch"}
    with pytest.raises(SandboxError, match="404"):
        sandbox.mutate(1, org="9999")
    with pytest.raises(SandboxError, match="400"):
        sandbox.mutate(1, kinds=["explode"])
    empty = sandbox.add_org(bookings=0)
    with pytest.raises(SandboxError, match="409"):
        sandbox.mutate(1, org=empty, kinds=["update"])
    (entry,) = sandbox.mutate(1, org=empty, kinds=["update", "create"])
    assert entry["kind"] == "create"  # nothing to update yet
    sandbox.remove_org(empty)


# ----------------------------------------------------------------- reproducibility


def _start_pair(seed: int) -> tuple[Sandbox, Sandbox]:
    """Two sandboxes with one seed, generated on the same UTC day (event dates follow it)."""
    for _ in range(3):
        first = Sandbox.start(orgs=2, bookings=30, seed=seed)
        second = Sandbox.start(orgs=2, bookings=30, seed=seed)
        days = {sb.truth()["generated_at"] // 86400 for sb in (first, second)}
        if len(days) == 1:
            return first, second
        first.stop()
        second.stop()
    raise AssertionError("could not start two sandboxes on one day")


def _relative(truth: dict[str, Any], *, timestamps: bool = True) -> dict[str, Any]:
    """Truth with timestamps made relative to generation (start times differ a little).

    Without ``timestamps`` they are dropped: an added org's history ends when it is added.
    """
    origin = truth["generated_at"]
    out: dict[str, Any] = {}
    for org_id, org in truth["orgs"].items():
        bookings = {}
        for booking_id, b in org["bookings"].items():
            a = dict(b["attributes"])
            for key in ("created_at", "updated_at"):
                if not timestamps:
                    del a[key]
                elif epoch(a[key]) < origin:
                    a[key] = epoch(a[key]) - origin
                else:
                    a[key] = "after start"
            bookings[booking_id] = {**b, "attributes": a}
        out[org_id] = {"bookings": bookings, "deleted": org["deleted"]}
    return out


@pytest.fixture
def twins() -> Iterator[tuple[Sandbox, Sandbox]]:
    first, second = _start_pair(seed=42)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_same_seed_same_data_and_same_mutations(twins: tuple[Sandbox, Sandbox]) -> None:
    first, second = twins
    assert _relative(first.truth()) == _relative(second.truth())
    runs = []
    for sb in twins:
        entries = sb.mutate(25) + sb.mutate(10, org="1002") + sb.mutate(5, kinds=["create"])
        runs.append([{k: e[k] for k in ("seq", "org", "id", "kind", "fields")} for e in entries])
    assert runs[0] == runs[1]
    assert _relative(first.truth()) == _relative(second.truth())
    assert first.add_org(5) == second.add_org(5)
    assert _relative(first.truth(), timestamps=False) == _relative(second.truth(), timestamps=False)

    with Sandbox.start(orgs=2, bookings=30, seed=43) as other:
        assert _relative(other.truth()) != _relative(first.truth())


# --------------------------------------------------------------------------- churn


def test_churn_mutates_steadily_and_stops(sandbox: Sandbox) -> None:
    start = last_seq(sandbox)
    sandbox.churn(40)
    wait_for(lambda: len(sandbox.log(start)) >= 60, what="60 churned mutations")
    sandbox.churn(0)
    stopped_at = last_seq(sandbox)
    entries = sandbox.log(start)
    assert len({e["org"] for e in entries}) == 3
    assert {e["kind"] for e in entries} >= {"create", "update", "touch"}
    assert_quiet(sandbox, stopped_at)


def test_churn_from_the_command_line_and_reset_stops_it() -> None:
    with Sandbox.start(orgs=2, bookings=5, churn=30) as sb:
        wait_for(lambda: len(sb.log()) >= 10, what="churn started by --churn")
        sb.reset()
        assert_quiet(sb, last_seq(sb))


# ------------------------------------------------------- truth, log, counters, orgs


def test_truth_log_and_counters(sandbox: Sandbox, session_for: Sessions) -> None:
    start = last_seq(sandbox)
    entries = sandbox.mutate(3, org="1002")
    assert sandbox.log(start) == entries
    assert sandbox.log(entries[1]["seq"]) == entries[2:]
    one = sandbox.truth("1002")
    assert list(one["orgs"]) == ["1002"]
    assert one["orgs"]["1002"] == sandbox.truth()["orgs"]["1002"]
    with pytest.raises(SandboxError, match="404"):
        sandbox.truth("9999")
    counters = sandbox.counters()
    assert counters == {
        "token_requests": 0,
        "token_requests_ok": 0,
        "api_requests": 0,
        "requests_per_window": {},
        "requests_per_second": {},
        "served_429": 0,
        "forced_429": 0,
        "expired_token_requests": 0,
        "unauthorized": 0,
        "unauthorized_by_reason": {},
        "list_requests_by_org": {},
        "get_requests_by_org": {},
        "list_requests_by_resource": {},
        "faults_served": {},
        "held_now": {},
        "status_codes": {},
        "by_app": {},
        "requests_per_window_by_app": {},
    }


def test_add_and_remove_an_org(sandbox: Sandbox, session_for: Sessions) -> None:
    org_id = sandbox.add_org(bookings=7)
    assert int(org_id) > 1003
    listed = session_for().get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).json()
    assert org_id in {o["id"] for o in listed["data"]}
    session = session_for(org=org_id)
    doc = session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).json()
    assert len(doc["data"]) == 7
    assert set(sandbox.truth(org_id)["orgs"][org_id]["bookings"]) == {b["id"] for b in doc["data"]}

    sandbox.remove_org(org_id)
    assert session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).status_code == 403
    listed = session_for().get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).json()
    assert org_id not in {o["id"] for o in listed["data"]}
    assert org_id not in sandbox.truth()["orgs"]
    with pytest.raises(SandboxError, match="404"):
        sandbox.remove_org(org_id)
    assert sandbox.add_org(bookings=1) != org_id  # ids are never reused


def test_schema_add_and_remove(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    before = {b["id"]: b for b in session.get(url, params={"page[size]": 100}).json()["data"]}

    sandbox.schema(add="deposit_due_on", value=None)
    after = {b["id"]: b for b in session.get(url, params={"page[size]": 100}).json()["data"]}
    for booking_id, booking in after.items():
        assert "deposit_due_on" in booking["attributes"]
        assert booking["attributes"]["deposit_due_on"] is None
        # A new API release does not move updated_at.
        assert booking["attributes"]["updated_at"] == before[booking_id]["attributes"]["updated_at"]
    (created,) = sandbox.mutate(1, org=ORG, kinds=["create"])
    fresh = session.get(f"{url}/{created['id']}").json()["data"]
    assert fresh["attributes"]["deposit_due_on"] is None
    with pytest.raises(SandboxError, match="409"):
        sandbox.schema(add="deposit_due_on", value=1)

    sandbox.schema(remove="deposit_due_on")
    sandbox.schema(remove="referral_source_id")
    doc = session.get(url, params={"page[size]": 100}).json()
    for booking in doc["data"]:
        assert "deposit_due_on" not in booking["attributes"]
        assert "referral_source_id" not in booking["attributes"]
    for entry in sandbox.mutate(10, org=ORG, kinds=["update", "create"]):
        assert "referral_source_id" not in entry["fields"]
    with pytest.raises(SandboxError, match="409"):
        sandbox.schema(remove="updated_at")
    with pytest.raises(SandboxError, match="409"):
        sandbox.schema(remove="no_such_attribute")

    # Put the shared sandbox back the way other tests expect it.
    sandbox.schema(add="referral_source_id", value=None)
