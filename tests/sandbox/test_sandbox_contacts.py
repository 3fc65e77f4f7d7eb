"""The second collection, ``/v2/contacts``: same machinery as bookings, its own data and faults."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from etbridge.sandbox.store import Store
from tests.sandbox.test_sandbox_pagination import sort_key, walk
from tests.support.sandbox import Sandbox

TIMEOUT = 30
ORG = "1001"
Sessions = Callable[..., requests.Session]


def truth_contacts(sb: Sandbox, org: str = ORG) -> dict[str, dict[str, Any]]:
    contacts: dict[str, dict[str, Any]] = sb.truth(org)["orgs"][org]["contacts"]
    return contacts


def test_contacts_are_seeded_without_changing_the_bookings_of_a_seed() -> None:
    def make(contacts: int) -> Store:
        return Store(orgs=2, bookings=20, contacts=contacts, seed=5, clock=lambda: 1.8e9)

    with_contacts, without = make(7), make(0)
    for org_id, org in with_contacts.truth()["orgs"].items():
        assert org["bookings"] == without.truth()["orgs"][org_id]["bookings"]
        assert len(org["contacts"]) == 7
        assert {r["type"] for r in org["contacts"].values()} == {"contacts"}
        assert not set(org["contacts"]) & set(org["bookings"])
    for store in (with_contacts, make(7)):
        org_state = store.orgs["1001"].collections["contacts"]
        assert org_state.ids == sorted(org_state.records)
        assert org_state.by_updated == sorted(
            (c.updated_ts, c.id) for c in org_state.records.values()
        )
    assert with_contacts.truth() == make(7).truth()


@pytest.mark.parametrize("sort", ["id", "-id", "updated_at", "-updated_at"])
def test_walk_sees_every_contact_once_in_order(
    sandbox: Sandbox, session_for: Sessions, sort: str
) -> None:
    expected = truth_contacts(sandbox)
    seen = walk(session_for(org=ORG), f"{sandbox.url}/v2/contacts", {"page[size]": 3, "sort": sort})
    assert [r["id"] for r in seen] == [
        r["id"]
        for r in sorted(expected.values(), key=sort_key(sort.lstrip("-")), reverse="-" in sort)
    ]
    assert {r["id"]: r for r in seen} == expected


def test_updated_filter_on_contacts_returns_only_newer_changes(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    newest = max(c["attributes"]["updated_at"] for c in truth_contacts(sandbox).values())
    params = {"filter[updated_at][gt]": newest, "sort": "updated_at"}
    assert walk(session, f"{sandbox.url}/v2/contacts", params) == []
    time.sleep(1.05)  # updated_at has whole seconds: the change must land after `newest`
    created = sandbox.mutate(1, org=ORG, kinds=["create"], resource="contacts")[0]
    updated = sandbox.mutate(1, org=ORG, kinds=["update"], resource="contacts")[0]
    assert created["resource"] == updated["resource"] == "contacts"
    seen = walk(session, f"{sandbox.url}/v2/contacts", params)
    assert {r["id"] for r in seen} == {created["id"], updated["id"]}
    assert all(r["attributes"]["updated_at"] > newest for r in seen)


def test_get_one_contact_and_its_account(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    contact_id, expected = next(iter(truth_contacts(sandbox).items()))
    doc = session.get(
        f"{sandbox.url}/v2/contacts/{contact_id}", params={"include": "account"}, timeout=TIMEOUT
    ).json()
    assert doc["data"] == expected
    account = expected["relationships"]["account"]["data"]
    assert [(r["type"], r["id"]) for r in doc["included"]] == [(account["type"], account["id"])]
    booking_id = next(iter(sandbox.truth(ORG)["orgs"][ORG]["bookings"]))
    missing = session.get(f"{sandbox.url}/v2/contacts/{booking_id}", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert "Contact" in missing.json()["errors"][0]["detail"]
    bad = session.get(f"{sandbox.url}/v2/contacts", params={"include": "owner"}, timeout=TIMEOUT)
    assert bad.status_code == 400


def test_contact_mutations_change_contacts_only(sandbox: Sandbox) -> None:
    before = sandbox.truth(ORG)["orgs"][ORG]
    entries = sandbox.mutate(30, org=ORG, resource="contacts")
    after = sandbox.truth(ORG)["orgs"][ORG]
    assert after["bookings"] == before["bookings"]
    assert {e["resource"] for e in entries} == {"contacts"}
    for entry in entries:
        if entry["kind"] == "delete":
            assert entry["id"] in after["deleted_contacts"]
            assert entry["id"] not in after["contacts"]
    last = {e["id"]: e for e in entries}
    for contact_id, entry in last.items():
        if entry["kind"] != "delete":
            record = after["contacts"][contact_id]
            assert record["attributes"]["updated_at"] == entry["updated_at"]
    updates = [e for e in entries if e["kind"] == "update"]
    assert updates and all("updated_at" in e["fields"] and len(e["fields"]) > 1 for e in updates)
    mixed = sandbox.mutate(40, org=ORG, resource=["bookings", "contacts"])
    assert {e["resource"] for e in mixed} == {"bookings", "contacts"}


def test_one_collection_can_fail_alone(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    sandbox.faults(contacts_error_500=1.0)
    assert session.get(f"{sandbox.url}/v2/contacts", timeout=TIMEOUT).status_code == 500
    assert session.get(f"{sandbox.url}/v2/contacts/1", timeout=TIMEOUT).status_code == 500
    assert session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).status_code == 200
    assert session.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).status_code == 200
    assert sandbox.counters()["faults_served"] == {"contacts_error_500": 2}
    sandbox.faults(contacts_error_500=0.0, bookings_error_500=1.0)
    assert session.get(f"{sandbox.url}/v2/contacts", timeout=TIMEOUT).status_code == 200
    assert session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).status_code == 500


def test_contacts_share_the_rate_limit_and_the_filter_knob(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    first = session.get(f"{sandbox.url}/v2/contacts", timeout=TIMEOUT)
    second = session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT)
    remaining = [int(r.headers["X-Api-Request-Remaining"]) for r in (first, second)]
    assert remaining[1] == remaining[0] - 1
    counters = sandbox.counters()
    assert counters["list_requests_by_resource"] == {"contacts": 1, "bookings": 1}
    sandbox.faults(no_updated_filter=1)
    filtered = session.get(
        f"{sandbox.url}/v2/contacts",
        params={"filter[updated_at][gt]": "2020-01-01T00:00:00Z"},
        timeout=TIMEOUT,
    )
    assert filtered.status_code == 400


def test_churn_can_cover_both_collections(sandbox: Sandbox) -> None:
    start = len(sandbox.log())
    sandbox.churn(200.0, resource="all")
    deadline = time.monotonic() + 20
    resources: set[str] = set()
    while resources != {"bookings", "contacts"}:
        assert time.monotonic() < deadline, f"churn touched only {resources}"
        time.sleep(0.05)
        resources = {e["resource"] for e in sandbox.log(start)}
    sandbox.churn(0.0)


def test_admin_rejects_an_unknown_resource(sandbox: Sandbox) -> None:
    response = requests.post(
        f"{sandbox.url}/_admin/mutate", json={"count": 1, "resource": "invoices"}, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert "resource" in response.json()["error"]
