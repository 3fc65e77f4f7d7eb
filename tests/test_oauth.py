"""The token endpoint (oauth.py): the answer parsed and its errors typed, against the sandbox."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from etbridge.errors import AuthenticationError, MalformedResponse
from etbridge.oauth import DEFAULT_EXPIRES_IN, TokenResponse, parse_token_response
from etbridge.tokencache import TokenCache
from tests.support import tokens
from tests.support.sandbox import Sandbox
from tests.support.tokens import (
    make_settings,
)

# The module's sandbox (one org, one booking) and, per test, the same with counters at zero.
sandbox = tokens.sandbox
sb = tokens.sb


def test_token_response_parsing() -> None:
    assert parse_token_response({"access_token": "t", "expires_in": 60}) == TokenResponse("t", 60)
    assert parse_token_response({"access_token": "t"}).expires_in == DEFAULT_EXPIRES_IN
    assert parse_token_response({"access_token": "t", "expires_in": "90"}).expires_in == 90
    for bad in (None, "soon", -5, 0, True):
        body = {"access_token": "t", "expires_in": bad}
        assert parse_token_response(body).expires_in == DEFAULT_EXPIRES_IN
    # created_at is never used, even when it disagrees with the clock.
    assert parse_token_response({"access_token": "t", "created_at": 0}).expires_in == 7200
    not_a_token: list[Any] = [{}, {"access_token": ""}, [], "x"]
    for body in not_a_token:
        with pytest.raises(MalformedResponse):
            parse_token_response(body)


def test_unknown_scope_is_an_authentication_error(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url, scope="crm_everything"))
    with pytest.raises(AuthenticationError) as exc:
        cache.get()
    assert exc.value.code == "invalid_scope"
