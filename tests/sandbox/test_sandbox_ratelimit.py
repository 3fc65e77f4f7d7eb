"""The per-application rate limit: fixed one-minute windows, headers, 429 + Retry-After."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.sandbox import Sandbox

TIMEOUT = 30
LIMIT = 5


@pytest.fixture(scope="module")
def limited() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=5, rate_limit=LIMIT) as sb:
        yield sb


def in_one_window(sb: Sandbox, scenario: str, limit: int = LIMIT) -> list[requests.Response]:
    """Run ``scenario`` inside a single rate-limit window (retrying if a minute turns)."""
    token = sb.token()
    for _ in range(3):
        sb.reset()  # empties the current window
        if limit != LIMIT:
            sb.config(rate_limit=limit)
        window = int(time.time() // 60)
        answers = _run(sb, token, scenario)
        if int(time.time() // 60) == window:
            return answers
    raise AssertionError("could not stay within one window three times")


def _run(sb: Sandbox, token: str, scenario: str) -> list[requests.Response]:
    good = {"Authorization": f"Bearer {token}", "X-API-ORG": "1001"}
    answers = []
    with requests.Session() as session:
        for step in scenario:
            if step == "t":  # a token request: does not count
                sb.token()
                continue
            headers = good if step == "g" else {"Authorization": "Bearer nope"}
            answers.append(session.get(f"{sb.url}/v2/bookings", headers=headers, timeout=TIMEOUT))
    return answers


def test_headers_count_down_then_429_with_retry_after(limited: Sandbox) -> None:
    # g = good request, b = bad token (401 still counts), t = token request (does not count).
    answers = in_one_window(limited, "gbtgtgggb")
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 401, 200, 200, 200, 429, 429]
    for answer in answers:
        assert answer.headers["X-Api-Request-Limit"] == str(LIMIT)
    remaining = [int(a.headers["X-Api-Request-Remaining"]) for a in answers]
    assert remaining == [4, 3, 2, 1, 0, 0, 0]
    for refused in answers[5:]:
        retry_after = int(refused.headers["Retry-After"])
        # Seconds to the end of the wall-clock minute (the check allows for slow machines).
        assert 1 <= retry_after <= 60
        assert refused.headers["Content-Type"].startswith("application/vnd.api+json")
        (error,) = refused.json()["errors"]
        assert error["status"] == "429" and error["detail"]
    counters = limited.counters()
    assert counters["served_429"] == 2
    assert counters["forced_429"] == 0
    assert counters["api_requests"] == 7
    assert counters["token_requests"] == 2
    # Over the limit the token is not even looked at: a 429, not a 401.
    assert counters["unauthorized"] == 1
    (window, count), *_ = counters["requests_per_window"].items()
    assert int(window) % 60 == 0 and count == 7


def test_retry_after_points_at_the_end_of_the_window(limited: Sandbox) -> None:
    answers = in_one_window(limited, "g" * (LIMIT + 1))
    refused = answers[-1]
    assert refused.status_code == 429
    now = time.time()
    to_window_end = 60 - now % 60
    assert abs(int(refused.headers["Retry-After"]) - to_window_end) <= 3


def test_config_changes_the_limit_until_reset(limited: Sandbox) -> None:
    answers = in_one_window(limited, "ggg", limit=2)
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["X-Api-Request-Limit"] for a in answers] == ["2", "2", "2"]
    limited.reset()
    answer = _run(limited, limited.token(), "g")[0]
    assert answer.status_code == 200
    assert answer.headers["X-Api-Request-Limit"] == str(LIMIT)
