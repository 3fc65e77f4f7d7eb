"""Cursor pagination, sorting, filtering and the JSON:API shape of listings, over HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.support.sandbox import Sandbox

TIMEOUT = 30
ORG = "1001"
Sessions = Callable[..., requests.Session]


def walk(
    session: requests.Session,
    url: str,
    params: dict[str, Any],
    *,
    between_pages: Callable[[], None] | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    """Follow ``after_cursor`` while ``has_more``; return every resource in page order."""
    seen: list[dict[str, Any]] = []
    query = dict(params)
    for _ in range(limit):
        resp = session.get(url, params=query, timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        seen.extend(doc["data"])
        meta = doc["meta"]
        if doc["data"]:
            assert meta["after_cursor"] is not None and meta["before_cursor"] is not None
        if not (meta["has_more"] and meta["after_cursor"]):
            return seen
        query["page[after]"] = meta["after_cursor"]
        if between_pages is not None:
            between_pages()
    raise AssertionError("pagination did not end")


def truth_bookings(sb: Sandbox, org: str = ORG) -> dict[str, dict[str, Any]]:
    bookings: dict[str, dict[str, Any]] = sb.truth(org)["orgs"][org]["bookings"]
    return bookings


def sort_key(field: str) -> Callable[[dict[str, Any]], tuple[Any, int]]:
    if field == "id":
        return lambda r: (int(r["id"]), int(r["id"]))
    return lambda r: (r["attributes"]["updated_at"], int(r["id"]))


@pytest.mark.parametrize("size", [1, 7, 25, 100])
@pytest.mark.parametrize("sort", ["id", "-id", "updated_at", "-updated_at"])
def test_walk_sees_every_booking_once_in_order(
    sandbox: Sandbox, session_for: Sessions, size: int, sort: str
) -> None:
    expected = truth_bookings(sandbox)
    seen = walk(
        session_for(org=ORG),
        f"{sandbox.url}/v2/bookings",
        {"page[size]": size, "sort": sort},
    )
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == set(expected)
    key = sort_key(sort.lstrip("-"))
    assert seen == sorted(seen, key=key, reverse=sort.startswith("-"))
    assert {r["id"]: r for r in seen} == expected  # the API renders what the truth holds


def test_default_page_size_and_sort(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    doc = session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).json()
    assert len(doc["data"]) == 25
    assert [int(r["id"]) for r in doc["data"]] == sorted(int(r["id"]) for r in doc["data"])
    assert doc["meta"]["has_more"] is True
    assert doc["included"] == []
    after = json.loads(base64.urlsafe_b64decode(doc["meta"]["after_cursor"] + "=="))
    assert after == {"id": doc["data"][-1]["id"]}  # a record-id keyset, like the docs' example
    # Blank cursors are ignored, as Rails' present? would.
    blank = {"page[after]": "", "page[before]": ""}
    again = session.get(f"{sandbox.url}/v2/bookings", params=blank, timeout=TIMEOUT).json()
    assert again == doc


def test_has_more_is_exact_on_the_last_page(sandbox: Sandbox, session_for: Sessions) -> None:
    total = len(truth_bookings(sandbox))
    assert 100 < total < 200
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    first = session.get(url, params={"page[size]": 100}, timeout=TIMEOUT).json()
    assert first["meta"]["has_more"] is True
    rest = total - 100
    params = {"page[size]": rest - 1, "page[after]": first["meta"]["after_cursor"]}
    short = session.get(url, params=params, timeout=TIMEOUT).json()
    assert len(short["data"]) == rest - 1
    assert short["meta"]["has_more"] is True
    params["page[size]"] = rest
    last = session.get(url, params=params, timeout=TIMEOUT).json()
    assert len(last["data"]) == rest
    assert last["meta"]["has_more"] is False
    params["page[after]"] = last["meta"]["after_cursor"]
    empty = session.get(url, params=params, timeout=TIMEOUT).json()
    assert empty["data"] == []
    assert empty["meta"] == {"after_cursor": None, "before_cursor": None, "has_more": False}


@pytest.mark.parametrize("sort", ["id", "-updated_at"])
@pytest.mark.parametrize("size", [1, 7, 100])
def test_page_before_walks_backwards(
    sandbox: Sandbox, session_for: Sessions, sort: str, size: int
) -> None:
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    forward = walk(session, url, {"page[size]": 100, "sort": sort})
    # The cursor of the last record, taken from a page that ends with it.
    cursor = _cursor_of_last(session, url, sort)

    backwards: list[dict[str, Any]] = []
    params: dict[str, Any] = {"page[size]": size, "sort": sort, "page[before]": cursor}
    while True:
        doc = session.get(url, params=params, timeout=TIMEOUT).json()
        assert len(doc["data"]) <= size
        backwards = doc["data"] + backwards
        if not (doc["meta"]["has_more"] and doc["meta"]["before_cursor"]):
            break
        params["page[before]"] = doc["meta"]["before_cursor"]
    assert backwards == forward[:-1]


def _cursor_of_last(session: requests.Session, url: str, sort: str) -> str:
    """The after_cursor of the page that ends with the last record."""
    params: dict[str, Any] = {"page[size]": 100, "sort": sort}
    while True:
        doc = session.get(url, params=params, timeout=TIMEOUT).json()
        if not doc["meta"]["has_more"]:
            cursor: str = doc["meta"]["after_cursor"]
            return cursor
        params["page[after]"] = doc["meta"]["after_cursor"]


def test_page_after_and_before_together_select_a_range(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    ten = session.get(url, params={"page[size]": 10}, timeout=TIMEOUT).json()
    cursors: list[str] = []
    for record in ten["data"]:
        page: dict[str, str | int] = {"page[size]": 1, **_after(cursors)}
        one = session.get(url, params=page, timeout=TIMEOUT)
        assert one.json()["data"] == [record]
        cursors.append(one.json()["meta"]["after_cursor"])
    params: dict[str, str | int] = {
        "page[after]": cursors[1],
        "page[before]": cursors[6],
        "page[size]": 100,
    }
    doc = session.get(url, params=params, timeout=TIMEOUT).json()
    assert doc["data"] == ten["data"][2:6]
    assert doc["meta"]["has_more"] is False


def _after(cursors: list[str]) -> dict[str, str]:
    return {"page[after]": cursors[-1]} if cursors else {}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"page[size]": 101}, 400),
        ({"page[size]": 0}, 400),
        ({"page[size]": "ten"}, 400),
        ({"page[number]": 2}, 400),
        ({"page[after]": "not-a-cursor"}, 400),
        ({"page[after]": "eyJpZCI6IjEwMDEifQ", "sort": "updated_at"}, 400),
        ({"sort": "name"}, 400),
        ({"filter[status][eq]": "lead"}, 400),
        ({"filter[updated_at][lt]": "2026-01-01T00:00:00Z"}, 400),
        ({"filter[updated_at]": "2026-01-01T00:00:00Z"}, 400),
        ({"filter[updated_at][gt]": "yesterday"}, 422),
        ({"include": "venue"}, 400),
    ],
)
def test_bad_list_parameters_are_json_api_errors(
    sandbox: Sandbox, session_for: Sessions, params: dict[str, Any], status: int
) -> None:
    resp = session_for(org=ORG).get(f"{sandbox.url}/v2/bookings", params=params, timeout=TIMEOUT)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/vnd.api+json")
    (error,) = resp.json()["errors"]
    assert error["status"] == str(status) and error["detail"]
    assert "X-Api-Request-Remaining" in resp.headers


@pytest.mark.parametrize("sort", ["id", "updated_at", "-updated_at"])
def test_updated_at_filters_gt_and_gteq(sandbox: Sandbox, session_for: Sessions, sort: str) -> None:
    expected = truth_bookings(sandbox)
    stamps = Counter(r["attributes"]["updated_at"] for r in expected.values())
    # A second many bookings share, from the middle of the range.
    ordered = sorted(stamps)
    pivot = max(ordered[len(ordered) // 3 : 2 * len(ordered) // 3], key=lambda s: stamps[s])
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    checks: list[tuple[str, Callable[[str], bool]]] = [
        ("gt", lambda s: s > pivot),
        ("gteq", lambda s: s >= pivot),
    ]
    for predicate, keep in checks:
        seen = walk(session, url, {f"filter[updated_at][{predicate}]": pivot, "sort": sort})
        want = {i for i, r in expected.items() if keep(r["attributes"]["updated_at"])}
        ids = [r["id"] for r in seen]
        assert len(ids) == len(set(ids))
        assert set(ids) == want, predicate
    assert len([s for s in stamps if s > pivot]) > 0


def test_filters_take_any_iso_8601_form(sandbox: Sandbox, session_for: Sessions) -> None:
    expected = truth_bookings(sandbox)
    pivot = sorted(r["attributes"]["updated_at"] for r in expected.values())[len(expected) // 2]
    instant = datetime.strptime(pivot, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    forms = [
        pivot,
        instant.isoformat(),  # +00:00
        instant.astimezone(datetime.now().astimezone().tzinfo).isoformat(),
        instant.replace(tzinfo=None).isoformat(),  # no zone: UTC
        instant.astimezone(UTC).isoformat(timespec="milliseconds"),
    ]
    session = session_for(org=ORG)
    url = f"{sandbox.url}/v2/bookings"
    answers = [
        {r["id"] for r in walk(session, url, {"filter[updated_at][gteq]": f, "page[size]": 100})}
        for f in forms
    ]
    assert all(a == answers[0] for a in answers)
    # A fractional bound: gt 12:00:00.5 keeps 12:00:01 but not 12:00:00.
    half = (instant + timedelta(milliseconds=500)).isoformat()
    gt_half = {r["id"] for r in walk(session, url, {"filter[updated_at][gt]": half})}
    assert gt_half == {i for i, r in expected.items() if r["attributes"]["updated_at"] > pivot}


def test_walk_is_stable_while_records_change(sandbox: Sandbox, session_for: Sessions) -> None:
    before = set(truth_bookings(sandbox))
    seq = sandbox.log()[-1]["seq"] if sandbox.log() else 0
    session = session_for(org=ORG)

    def churn_a_little() -> None:
        sandbox.mutate(4, org=ORG, kinds=["update", "touch"])
        sandbox.mutate(1, org=ORG, kinds=["create"])
        sandbox.mutate(1, org=ORG, kinds=["delete"])

    seen = walk(
        session, f"{sandbox.url}/v2/bookings", {"page[size]": 10}, between_pages=churn_a_little
    )
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)), "a record was served twice"
    log = sandbox.log(seq)
    created = {e["id"] for e in log if e["kind"] == "create"}
    deleted = {e["id"] for e in log if e["kind"] == "delete"}
    assert created and deleted
    assert set(ids) <= before | created
    # Everything that survived the walk was seen, including records created during it.
    assert (before | created) - deleted <= set(ids)
    assert created - deleted <= set(ids)


def test_organizations_need_no_org_header(sandbox: Sandbox, session_for: Sessions) -> None:
    resp = session_for().get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT)
    assert resp.status_code == 200
    doc = resp.json()
    orgs = {r["id"]: r for r in doc["data"]}
    assert set(sandbox.truth()["orgs"]) == set(orgs)
    for org_id, resource in orgs.items():
        assert resource["type"] == "organizations"
        assert resource["attributes"]["api_org_id"] == org_id
        assert resource["attributes"]["name"]
    assert doc["meta"]["has_more"] is False
    paged = walk(session_for(), f"{sandbox.url}/v2/organizations", {"page[size]": 1})
    assert paged == doc["data"]


@pytest.mark.parametrize(("org", "status"), [(None, 400), ("9999", 403), ("abc", 403)])
def test_bookings_need_a_known_org(
    sandbox: Sandbox, session_for: Sessions, org: str | None, status: int
) -> None:
    session = session_for(org=org)
    for path in ("bookings", "bookings/100001"):
        resp = session.get(f"{sandbox.url}/v2/{path}", timeout=TIMEOUT)
        assert resp.status_code == status, resp.text
        assert resp.json()["errors"][0]["status"] == str(status)


def test_get_one_booking(sandbox: Sandbox, session_for: Sessions) -> None:
    expected = truth_bookings(sandbox)
    booking_id = sorted(expected)[3]
    session = session_for(org=ORG)
    resp = session.get(f"{sandbox.url}/v2/bookings/{booking_id}", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/vnd.api+json; charset=utf-8"
    assert resp.json()["data"] == expected[booking_id]
    other_org = next(iter(truth_bookings(sandbox, "1002")))
    for missing in (other_org, "1", "abc"):
        resp = session.get(f"{sandbox.url}/v2/bookings/{missing}", timeout=TIMEOUT)
        assert resp.status_code == 404
    assert sandbox.counters()["get_requests_by_org"] == {ORG: 4}


def test_include_adds_the_related_resources(sandbox: Sandbox, session_for: Sessions) -> None:
    params: dict[str, str | int] = {"include": "account,contact,owner", "page[size]": 100}
    doc = session_for(org=ORG).get(f"{sandbox.url}/v2/bookings", params=params).json()
    wanted = {
        (rel["data"]["type"], rel["data"]["id"])
        for r in doc["data"]
        for rel in r["relationships"].values()
        if rel["data"] is not None
    }
    included = [(r["type"], r["id"]) for r in doc["included"]]
    assert len(included) == len(set(included))
    assert set(included) == wanted
    assert {t for t, _ in included} == {"accounts", "contacts", "users"}


def test_unknown_paths_and_methods(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    assert session.get(f"{sandbox.url}/v2/venues", timeout=TIMEOUT).status_code == 404
    resp = session.post(f"{sandbox.url}/v2/bookings", json={}, timeout=TIMEOUT)
    assert resp.status_code == 405
    assert resp.json()["errors"][0]["status"] == "405"
    counters = sandbox.counters()
    assert counters["api_requests"] == 2
    assert counters["status_codes"] == {"404": 1, "405": 1}


def test_list_requests_are_counted_per_org(sandbox: Sandbox, session_for: Sessions) -> None:
    for org, times in (("1001", 3), ("1002", 1)):
        session = session_for(org=org)
        for _ in range(times):
            session.get(f"{sandbox.url}/v2/bookings", timeout=TIMEOUT).raise_for_status()
    before = int(time.time())
    session_for().get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).raise_for_status()
    after = int(time.time())
    counters = sandbox.counters()
    assert counters["list_requests_by_org"] == {"1001": 3, "1002": 1}
    assert counters["api_requests"] == 5
    assert sum(counters["requests_per_window"].values()) == 5
    per_second = counters["requests_per_second"]
    assert sum(per_second.values()) == 5
    # The last request fell in a second of its own span (the sandbox shares this clock).
    assert any(before <= int(k) <= after for k in per_second)
