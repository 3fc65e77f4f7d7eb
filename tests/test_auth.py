"""BearerAuth (auth.py) against the real sandbox: the token on, a 401 answered once.

And no secret in logs, reprs or errors, across the token modules.
"""

from __future__ import annotations

import logging

import pytest
import redis
import requests

from etbridge.auth import BearerAuth
from etbridge.errors import AuthenticationError
from etbridge.tokencache import TokenCache
from tests.support import tokens
from tests.support.sandbox import Sandbox
from tests.support.tokens import (
    BogusTokens,
    make_settings,
    token_requests,
)

# The module's sandbox (one org, one booking) and, per test, the same with counters at zero.
sandbox = tokens.sandbox
sb = tokens.sb


def test_bearer_auth_retries_once_after_revocation(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    session = requests.Session()
    session.auth = BearerAuth(cache)
    assert session.get(f"{sb.url}/v2/organizations", timeout=10).status_code == 200
    first = cache.get()
    sb.revoke_tokens()
    resp = session.get(f"{sb.url}/v2/organizations", timeout=10)
    assert resp.status_code == 200
    assert [h.status_code for h in resp.history] == [401]
    assert resp.request.headers["Authorization"] != f"Bearer {first}"
    assert token_requests(sb) == 2
    assert session.get(f"{sb.url}/v2/organizations", timeout=10).history == []


def test_a_second_401_is_an_authentication_error(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = BogusTokens(r, make_settings(sb, redis_url))
    session = requests.Session()
    session.auth = BearerAuth(cache)
    with pytest.raises(AuthenticationError, match="401 twice") as exc:
        session.get(f"{sb.url}/v2/organizations", timeout=10)
    assert "bogus" not in str(exc.value)
    assert sb.counters()["unauthorized"] == 2


def test_no_secret_in_logs_reprs_or_errors(
    sb: Sandbox,
    r: redis.Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(sb, redis_url)
    cache = TokenCache(r, settings)
    auth = BearerAuth(cache)
    session = requests.Session()
    session.auth = auth
    session.get(f"{sb.url}/v2/organizations", timeout=10)
    token = cache.get()
    sb.revoke_tokens()
    session.get(f"{sb.url}/v2/organizations", timeout=10)
    new_token = cache.get()
    errors: list[str] = []
    for bad in (
        # Other scopes, so the good token cached above is not theirs.
        TokenCache(
            r,
            make_settings(
                sb, redis_url, client_secret="wrong-" + sb.client_secret, scope="crm_manage"
            ),
        ),
        BogusTokens(r, make_settings(sb, redis_url, scope="crm_read crm_manage")),
    ):
        bad_session = requests.Session()
        bad_session.auth = BearerAuth(bad)
        for _ in range(2):
            try:
                bad_session.get(f"{sb.url}/v2/organizations", timeout=10)
            except AuthenticationError as exc:
                errors += [str(exc), repr(exc)]
    assert len(errors) == 8
    out, err = capfd.readouterr()
    haystack = "\n".join([caplog.text, out, err, repr(cache), repr(auth), *errors])
    assert "token fetched" in caplog.text
    for secret in (sb.client_secret, token, new_token):
        assert secret not in haystack
