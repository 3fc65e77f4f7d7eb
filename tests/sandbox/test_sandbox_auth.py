"""The sandbox's OAuth token endpoint and bearer-token checks, over real HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support.sandbox import Sandbox

TIMEOUT = 30


def creds(sb: Sandbox, **overrides: str) -> dict[str, str]:
    body = {
        "grant_type": "client_credentials",
        "client_id": sb.client_id,
        "client_secret": sb.client_secret,
        "scope": "crm_read crm_manage",
    }
    body.update(overrides)
    return body


def test_token_with_a_json_body_has_doorkeepers_shape(sandbox: Sandbox) -> None:
    before = time.time()
    resp = requests.post(sandbox.token_url, json=creds(sandbox), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "created_at"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 7200
    assert body["scope"] == "crm_read crm_manage"
    assert int(before) <= body["created_at"] <= time.time() + 1
    assert len(body["access_token"]) >= 32


def test_token_with_a_form_body(sandbox: Sandbox) -> None:
    resp = requests.post(sandbox.token_url, data=creds(sandbox, scope="crm_read"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "crm_read"


def test_token_with_http_basic_client_authentication(sandbox: Sandbox) -> None:
    basic = base64.b64encode(f"{sandbox.client_id}:{sandbox.client_secret}".encode()).decode()
    resp = requests.post(
        sandbox.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    # No scope asked: the application's scopes.
    assert resp.json()["scope"] == "crm_read crm_manage"


@pytest.mark.parametrize(
    ("overrides", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"scope": "crm_read crm_admin"}, 400, "invalid_scope"),
        ({"grant_type": ""}, 400, "invalid_request"),
    ],
)
def test_token_errors_follow_rfc_6749(
    sandbox: Sandbox, overrides: dict[str, str], status: int, error: str
) -> None:
    for send in ("json", "data"):
        body = creds(sandbox, **overrides)
        resp = (
            requests.post(sandbox.token_url, json=body, timeout=TIMEOUT)
            if send == "json"
            else requests.post(sandbox.token_url, data=body, timeout=TIMEOUT)
        )
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["error"] == error
        assert body["error_description"]
    counters = sandbox.counters()
    assert counters["token_requests"] == 2
    assert counters["token_requests_ok"] == 0


def test_token_request_without_credentials_is_invalid_client(sandbox: Sandbox) -> None:
    resp = requests.post(
        sandbox.token_url, json={"grant_type": "client_credentials"}, timeout=TIMEOUT
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" in resp.headers


def test_token_request_with_malformed_json_is_invalid_request(sandbox: Sandbox) -> None:
    resp = requests.post(
        sandbox.token_url,
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"


def test_token_requests_are_counted_but_not_rate_limited(sandbox: Sandbox) -> None:
    for _ in range(3):
        sandbox.token()
    requests.post(sandbox.token_url, json=creds(sandbox, client_secret="x"), timeout=TIMEOUT)
    counters = sandbox.counters()
    assert counters["token_requests"] == 4
    assert counters["token_requests_ok"] == 3
    assert counters["api_requests"] == 0
    assert counters["requests_per_window"] == {}


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [(None, "missing"), ("Bearer not-a-token", "unknown"), ("Basic Zm9vOmJhcg==", "missing")],
)
def test_api_without_a_valid_token_is_401_json_api(
    sandbox: Sandbox, authorization: str | None, reason: str
) -> None:
    headers = {"X-API-ORG": "1001"}
    if authorization:
        headers["Authorization"] = authorization
    resp = requests.get(f"{sandbox.url}/v2/bookings", headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 401
    assert resp.headers["Content-Type"].startswith("application/vnd.api+json")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "X-Api-Request-Limit" in resp.headers and "X-Api-Request-Remaining" in resp.headers
    (error,) = resp.json()["errors"]
    assert error["status"] == "401" and error["title"] and error["detail"]
    counters = sandbox.counters()
    assert counters["unauthorized"] == 1
    assert counters["unauthorized_by_reason"] == {reason: 1}
    assert counters["api_requests"] == 1
    assert counters["expired_token_requests"] == 0


def test_revoked_tokens_get_401_and_new_tokens_work(
    sandbox: Sandbox, session_for: Callable[..., requests.Session]
) -> None:
    old = session_for()
    assert old.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).status_code == 200
    sandbox.revoke_tokens()
    resp = old.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT)
    assert resp.status_code == 401
    assert "revoked" in resp.json()["errors"][0]["detail"]
    fresh = session_for()
    assert fresh.get(f"{sandbox.url}/v2/organizations", timeout=TIMEOUT).status_code == 200
    counters = sandbox.counters()
    assert counters["unauthorized"] == 1
    assert counters["unauthorized_by_reason"] == {"revoked": 1}
    assert counters["expired_token_requests"] == 0


@pytest.fixture(scope="module")
def short_ttl() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=3, token_ttl=2, rate_limit=1_000_000) as sb:
        yield sb


def test_tokens_expire_after_token_ttl(short_ttl: Sandbox) -> None:
    sb = short_ttl
    issued = time.monotonic()
    resp = requests.post(sb.token_url, json=creds(sb), timeout=TIMEOUT)
    assert resp.json()["expires_in"] == 2
    headers = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    url = f"{sb.url}/v2/organizations"
    first = requests.get(url, headers=headers, timeout=TIMEOUT)
    if time.monotonic() - issued < 1.5:  # a stalled machine may already be past the TTL
        assert first.status_code == 200

    deadline = time.monotonic() + 30
    while True:
        resp = requests.get(url, headers=headers, timeout=TIMEOUT)
        if resp.status_code == 401:
            break
        assert resp.status_code == 200
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.1)  # polling interval while waiting for the condition
    assert time.monotonic() - issued >= 1.5
    assert resp.json()["errors"][0]["detail"] == "The access token expired"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    counters = sb.counters()
    assert counters["expired_token_requests"] >= 1
    assert counters["unauthorized_by_reason"].get("expired") == counters["expired_token_requests"]
    # A new token works again.
    fresh = {"Authorization": f"Bearer {sb.token()}"}
    assert requests.get(url, headers=fresh, timeout=TIMEOUT).status_code == 200
