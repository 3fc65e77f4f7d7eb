"""Glitches (``/_admin/glitches``): listings that lie, a 403 org header, an unlisted org."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.support.sandbox import Sandbox, SandboxError

TIMEOUT = 30
ORG = "1002"
Sessions = Callable[..., requests.Session]


def _all_ids(session: requests.Session, sb: Sandbox) -> list[str]:
    ids: list[str] = []
    params: dict[str, Any] = {"page[size]": 50}
    while True:
        doc = session.get(f"{sb.url}/v2/bookings", params=params, timeout=TIMEOUT).json()
        ids += [r["id"] for r in doc["data"]]
        if not doc["meta"]["has_more"]:
            return ids
        params["page[after]"] = doc["meta"]["after_cursor"]


def test_empty_listings_answer_200_with_no_records_but_get_tells_the_truth(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    some_id = next(iter(sandbox.truth(ORG)["orgs"][ORG]["bookings"]))
    sandbox.glitch(ORG, empty_listings=True)
    resp = session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["data"] == []
    assert doc["meta"] == {"after_cursor": None, "before_cursor": None, "has_more": False}
    one = session.get(f"{sandbox.url}/v2/bookings/{some_id}", timeout=TIMEOUT)
    assert one.status_code == 200 and one.json()["data"]["id"] == some_id
    # Other orgs are untouched.
    other = session_for(org="1001").get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).json()
    assert other["data"]
    assert sandbox.counters()["faults_served"] == {"empty_listing": 1}
    sandbox.glitch(ORG, empty_listings=False)
    assert session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).json()["data"]


def test_drop_fraction_leaves_out_the_same_bookings_every_time(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    truth = set(sandbox.truth(ORG)["orgs"][ORG]["bookings"])
    assert sorted(_all_ids(session, sandbox), key=int) == sorted(truth, key=int)
    sandbox.glitch(ORG, drop_fraction=0.3)
    first, second = _all_ids(session, sandbox), _all_ids(session, sandbox)
    assert first == second
    missing = truth - set(first)
    assert 0.15 * len(truth) < len(missing) < 0.45 * len(truth)
    assert set(first) <= truth
    assert sandbox.counters()["faults_served"]["dropped_records"] == 2 * len(missing)
    gone = sorted(missing)[0]
    assert session.get(f"{sandbox.url}/v2/bookings/{gone}", timeout=TIMEOUT).status_code == 200
    assert sandbox.admin("GET", "glitches")["glitches"][ORG]["drop_fraction"] == 0.3
    sandbox.reset()  # a reset ends every glitch
    assert sandbox.admin("GET", "glitches") == {"glitches": {}}
    assert set(_all_ids(session, sandbox)) == truth


def test_forbidden_org_answers_403_on_every_bookings_call(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    some_id = next(iter(sandbox.truth(ORG)["orgs"][ORG]["bookings"]))
    sandbox.glitch(ORG, forbidden=True)
    for path in ("/v2/bookings", f"/v2/bookings/{some_id}"):
        resp = session.get(f"{sandbox.url}{path}", timeout=TIMEOUT)
        assert resp.status_code == 403
        assert resp.json()["errors"][0]["status"] == "403"
    orgs = session.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).json()
    assert ORG in [o["id"] for o in orgs["data"]]  # still listed: only the header fails
    assert sandbox.counters()["faults_served"] == {"forbidden": 2}
    sandbox.glitch(ORG, forbidden=False)
    assert session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).status_code == 200


def test_unlisted_org_vanishes_from_organizations_only(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for()
    sandbox.glitch(ORG, unlisted=True)
    orgs = session.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).json()
    assert ORG not in [o["id"] for o in orgs["data"]] and "1001" in [o["id"] for o in orgs["data"]]
    resp = session_for(org=ORG).get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT)
    assert resp.status_code == 200
    sandbox.glitch(ORG, unlisted=False)
    orgs = session.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).json()
    assert ORG in [o["id"] for o in orgs["data"]]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"empty_listings": True}, 400),  # no org
        ({"org": "999999", "forbidden": True}, 404),
        ({"org": ORG, "drop_fraction": 1.5}, 400),
        ({"org": ORG, "forbidden": 1}, 400),
        ({"org": ORG, "sideways": True}, 400),
    ],
)
def test_bad_glitch_calls_are_refused(sandbox: Sandbox, body: dict[str, Any], status: int) -> None:
    with pytest.raises(SandboxError, match=str(status)):
        sandbox.admin("POST", "glitches", body)
