"""Fault injection: each knob, over real HTTP, and that faults only hit ``/v2/`` after auth."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.support.fleet import wait_for
from tests.support.sandbox import Sandbox, SandboxError

TIMEOUT = 30
ORG = "1001"
Sessions = Callable[..., requests.Session]


def bookings_url(sb: Sandbox) -> str:
    return f"{sb.url}/v2/bookings"


def test_error_500_is_a_json_api_error(sandbox: Sandbox, session_for: Sessions) -> None:
    sandbox.faults(error_500=1.0)
    resp = session_for(org=ORG).get(bookings_url(sandbox), timeout=TIMEOUT)
    assert resp.status_code == 500
    assert resp.headers["Content-Type"].startswith("application/vnd.api+json")
    assert resp.json()["errors"][0]["status"] == "500"
    assert "X-Api-Request-Remaining" in resp.headers
    counters = sandbox.counters()
    assert counters["faults_served"] == {"error_500": 1}
    assert counters["api_requests"] == 1  # a fault answer still counts as a request


def test_html_502_looks_like_a_proxy_page(sandbox: Sandbox, session_for: Sessions) -> None:
    sandbox.faults(html_502=1.0)
    resp = session_for(org=ORG).get(bookings_url(sandbox), timeout=TIMEOUT)
    assert resp.status_code == 502
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in resp.text and "nginx" in resp.text
    assert "X-Api-Request-Remaining" not in resp.headers  # the proxy answered, not the API
    with pytest.raises(requests.JSONDecodeError):
        resp.json()
    assert sandbox.counters()["faults_served"] == {"html_502": 1}


def test_truncated_is_a_200_json_api_body_cut_short(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    session = session_for(org=ORG)
    whole = session.get(bookings_url(sandbox), timeout=TIMEOUT)
    sandbox.faults(truncated=1.0)
    resp = session.get(bookings_url(sandbox), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == whole.headers["Content-Type"]
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    assert resp.content.startswith(b'{"data":[{"type":"bookings"')
    assert 0 < len(resp.content) < len(whole.content)
    assert whole.content.startswith(resp.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)
    assert sandbox.counters()["faults_served"] == {"truncated": 1}


def test_slow_delays_the_answer(sandbox: Sandbox, session_for: Sessions) -> None:
    sandbox.faults(slow=1.0, slow_seconds=0.6)
    started = time.monotonic()
    resp = session_for(org=ORG).get(bookings_url(sandbox), timeout=TIMEOUT)
    assert time.monotonic() - started >= 0.6
    assert resp.status_code == 200
    assert sandbox.counters()["faults_served"] == {"slow": 1}
    assert sandbox.counters()["held_now"] == {}


def test_held_now_counts_the_requests_the_slow_fault_holds(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    sandbox.faults(slow=1.0, slow_seconds=2.5)
    session = session_for(org=ORG)
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(session.get, bookings_url(sandbox), timeout=TIMEOUT)]
        wait_for(lambda: sandbox.counters()["held_now"] == {"2.5": 1}, 10, "one request held")
        assert all(a.result().status_code == 200 for a in answers)
    assert sandbox.counters()["held_now"] == {}


def test_storm_429(sandbox: Sandbox, session_for: Sessions) -> None:
    sandbox.faults(storm_429=1.0, storm_retry_after=2)
    session = session_for(org=ORG)
    for _ in range(3):
        resp = session.get(bookings_url(sandbox), timeout=TIMEOUT)
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == "2"
        assert resp.json()["errors"][0]["status"] == "429"
    counters = sandbox.counters()
    assert counters["faults_served"] == {"storm_429": 3}
    assert counters["served_429"] == 0 and counters["forced_429"] == 0


def test_force_429_hits_the_next_calls_only(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    sandbox.force_429(2, retry_after=7)
    answers = [session.get(bookings_url(sandbox), timeout=TIMEOUT) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert [a.headers.get("Retry-After") for a in answers] == ["7", "7", None]
    assert answers[0].headers["X-Api-Request-Remaining"] == "0"
    counters = sandbox.counters()
    assert counters["forced_429"] == 2
    assert counters["served_429"] == 0


def test_mutate_between_pages(sandbox: Sandbox, session_for: Sessions) -> None:
    session = session_for(org=ORG)
    start = _last_seq(sandbox)
    sandbox.faults(mutate_between_pages=2)
    pages = 0
    params: dict[str, Any] = {"page[size]": 40}
    while True:
        doc = session.get(bookings_url(sandbox), params=params, timeout=TIMEOUT).json()
        pages += 1
        # Mutations happened before each page that had a cursor, never before the first.
        assert len(sandbox.log(start)) == 2 * (pages - 1)
        if not doc["meta"]["has_more"]:
            break
        params["page[after]"] = doc["meta"]["after_cursor"]
    assert pages >= 3
    entries = sandbox.log(start)
    assert {e["org"] for e in entries} == {ORG}
    assert sandbox.counters()["faults_served"] == {"mutate_between_pages": pages - 1}


def _last_seq(sb: Sandbox) -> int:
    entries = sb.log()
    return int(entries[-1]["seq"]) if entries else 0


def test_faults_come_after_auth_and_only_on_v2(sandbox: Sandbox, session_for: Sessions) -> None:
    sandbox.faults(error_500=1.0, html_502=1.0, storm_429=1.0)
    bad = requests.get(
        bookings_url(sandbox),
        headers={"Authorization": "Bearer nope", "X-API-ORG": ORG},
        timeout=TIMEOUT,
    )
    assert bad.status_code == 401
    assert sandbox.token()  # the token endpoint is not faulted
    assert sandbox.counters()["faults_served"] == {}


def test_rates_between_0_and_1_fault_some_calls(sandbox: Sandbox, session_for: Sessions) -> None:
    sandbox.faults(error_500=0.5)
    session = session_for(org=ORG)
    statuses = [
        session.get(bookings_url(sandbox), params={"page[size]": 1}, timeout=TIMEOUT).status_code
        for _ in range(60)
    ]
    assert statuses.count(500) + statuses.count(200) == 60
    assert 5 <= statuses.count(500) <= 55
    assert sandbox.counters()["faults_served"]["error_500"] == statuses.count(500)


def test_faults_are_validated_and_reset_turns_them_off(
    sandbox: Sandbox, session_for: Sessions
) -> None:
    for bad in (
        {"error_500": 1.5},
        {"bogus": 0.1},
        {"slow": "often"},
        {"mutate_between_pages": -1},
    ):
        with pytest.raises(SandboxError, match="400"):
            sandbox.faults(**bad)
    sandbox.faults(error_500=1.0)
    sandbox.force_429(5, retry_after=1)
    settings = sandbox.admin("GET", "faults")
    assert settings["faults"]["error_500"] == 1.0 and settings["forced_429_left"] == 5
    sandbox.reset()
    settings = sandbox.admin("GET", "faults")
    assert settings["faults"]["error_500"] == 0.0 and settings["forced_429_left"] == 0
    resp = session_for(org=ORG).get(bookings_url(sandbox), timeout=TIMEOUT)
    assert resp.status_code == 200
