"""Several applications in one sandbox: credentials, orgs and a rate limit each."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from etbridge.sandbox.cli import parse_config
from etbridge.sandbox.config import AppSpec, SandboxConfig, parse_app
from tests.support.sandbox import Sandbox, SandboxApp, SandboxError

TIMEOUT = 30
# a: two orgs and 5 requests a minute; b: one org, the sandbox's limit; c: every org.
A = SandboxApp("app-a", "secret-a", orgs=("1001", "1002"), rate_limit=5)
B = SandboxApp("app-b", "secret-b", orgs=("1003",))
C = SandboxApp("app-c", "secret-c")


@pytest.fixture(scope="module")
def multi() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=3, bookings=5, rate_limit=1000, apps=[A, B, C]) as sb:
        yield sb


@pytest.fixture
def sb(multi: Sandbox) -> Sandbox:
    multi.reset()
    return multi


def get(sb: Sandbox, token: str, path: str, org: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if org is not None:
        headers["X-API-ORG"] = org
    return requests.get(f"{sb.url}/v2/{path}", headers=headers, timeout=TIMEOUT)


def listed(sb: Sandbox, token: str) -> list[str]:
    answer = get(sb, token, "organizations")
    assert answer.status_code == 200, answer.text
    return [o["id"] for o in answer.json()["data"]]


def test_each_application_has_its_own_credentials(sb: Sandbox) -> None:
    for app in (A, B, C):
        assert sb.token(app=app)
    crossed = SandboxApp(A.client_id, B.client_secret)
    answer = requests.post(
        sb.token_url,
        data={"grant_type": "client_credentials", "client_id": A.client_id, "client_secret": "x"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    with pytest.raises(SandboxError, match="401"):
        sb.token(app=crossed)
    # The default credentials of the command line are not an application any more.
    with pytest.raises(SandboxError, match="401"):
        sb.token(app=SandboxApp("sandbox-client", "sandbox-secret"))
    by_app = sb.counters()["by_app"]
    assert by_app[A.client_id] == {"token_requests": 3, "token_requests_ok": 1}
    assert by_app[B.client_id] == {"token_requests": 1, "token_requests_ok": 1}
    assert "sandbox-client" not in by_app


def test_each_application_sees_its_own_orgs(sb: Sandbox) -> None:
    a, b, c = (sb.token(app=app) for app in (A, B, C))
    assert listed(sb, a) == ["1001", "1002"]
    assert listed(sb, b) == ["1003"]
    assert listed(sb, c) == ["1001", "1002", "1003"]
    assert get(sb, a, "bookings", org="1001").status_code == 200
    refused = get(sb, a, "bookings", org="1003")
    assert refused.status_code == 403
    assert "not accessible to this application" in refused.text
    assert get(sb, b, "bookings", org="1001").status_code == 403
    assert get(sb, c, "contacts", org="1003").status_code == 200


def test_revoking_one_applications_tokens(sb: Sandbox) -> None:
    a, b = sb.token(app=A), sb.token(app=B)
    sb.revoke_tokens(app=A.client_id)
    refused = get(sb, a, "organizations")
    assert refused.status_code == 401
    assert "revoked" in refused.headers["WWW-Authenticate"]
    assert get(sb, b, "organizations").status_code == 200
    assert sb.counters()["by_app"][A.client_id]["unauthorized"] == 1
    sb.revoke_tokens()
    assert get(sb, b, "organizations").status_code == 401


def test_an_added_org_is_seen_by_the_apps_named_and_those_seeing_all(sb: Sandbox) -> None:
    org_id = sb.add_org(bookings=2, apps=[B.client_id])
    a, b, c = (sb.token(app=app) for app in (A, B, C))
    assert org_id in listed(sb, b) and org_id in listed(sb, c)
    assert org_id not in listed(sb, a)
    apps = sb.apps()
    assert apps[B.client_id] == {"orgs": ["1003", org_id], "rate_limit": 1000}
    assert apps[C.client_id]["orgs"] is None
    assert "secret" not in str(apps)
    with pytest.raises(SandboxError, match="404"):
        sb.add_org(apps=["app-zzz"])
    sb.remove_org(org_id)


Step = tuple[str, str, str | None]  # token, path, X-API-ORG


def in_one_window(sb: Sandbox, scenario: list[Step]) -> list[requests.Response]:
    """Requests ``(token, path)`` inside one rate-limit window (retried if a minute turns)."""
    for _ in range(3):
        sb.reset()  # empties the current window
        window = int(time.time() // 60)
        answers = [get(sb, token, path, org=org) for token, path, org in scenario]
        if int(time.time() // 60) == window:
            return answers
    raise AssertionError("could not stay within one window three times")


def test_each_application_has_its_own_rate_limit(sb: Sandbox) -> None:
    a, b = sb.token(app=A), sb.token(app=B)
    scenario: list[Step] = [(a, "bookings", "1001")] * 6
    scenario.extend([(b, "bookings", "1003")] * 3)
    scenario.insert(5, ("unknown-token", "organizations", None))
    answers = in_one_window(sb, scenario)
    statuses = [r.status_code for r in answers]
    # a's five, an unknown token (counted against the first application: a), then b's.
    assert statuses == [200, 200, 200, 200, 200, 429, 429, 200, 200, 200]
    assert {r.headers["X-Api-Request-Limit"] for r in answers[:7]} == {"5"}
    assert {r.headers["X-Api-Request-Limit"] for r in answers[7:]} == {"1000"}
    assert [r.headers["X-Api-Request-Remaining"] for r in answers[7:]] == ["999", "998", "997"]
    counters = sb.counters()
    assert counters["by_app"][A.client_id]["api_requests"] == 7
    assert counters["by_app"][A.client_id]["served_429"] == 2
    assert counters["by_app"][B.client_id]["api_requests"] == 3
    assert "served_429" not in counters["by_app"][B.client_id]
    assert sum(counters["requests_per_window_by_app"][A.client_id].values()) == 7
    assert counters["served_429"] == 2


def test_config_sets_one_applications_limit_or_all(sb: Sandbox) -> None:
    answer = sb.config(rate_limit=7, app=B.client_id)
    assert answer["rate_limits"] == {A.client_id: 5, B.client_id: 7, C.client_id: 1000}
    answer = sb.config(rate_limit=9)
    assert answer["rate_limits"] == {A.client_id: 9, B.client_id: 9, C.client_id: 9}
    assert answer["rate_limit"] == 9
    with pytest.raises(SandboxError, match="404"):
        sb.config(rate_limit=3, app="app-zzz")
    sb.reset()
    assert sb.apps()[A.client_id]["rate_limit"] == 5


def test_parse_app() -> None:
    assert parse_app("id:s") == AppSpec("id", "s")
    assert parse_app("id:s:*:30") == AppSpec("id", "s", None, 30)
    assert parse_app("id:s:1001,1002") == AppSpec("id", "s", ("1001", "1002"))
    for bad in ("id", "id::", "id:s:abc", "id:s:1001:0", "a:b:c:d:e"):
        with pytest.raises(ValueError, match=r"expected CLIENT_ID|ORGS are|RATE_LIMIT must"):
            parse_app(bad)
    assert SandboxConfig().applications() == (AppSpec("sandbox-client", "sandbox-secret"),)
    config = parse_config(["--port", "0", "--app", "x:y:1001:5", "--app", "z:w"])
    assert config.applications() == (AppSpec("x", "y", ("1001",), 5), AppSpec("z", "w"))
    with pytest.raises(SystemExit):
        parse_config(["--port", "0", "--app", "x:y", "--app", "x:z"])
