"""Helpers and fixtures of the token tests (test_oauth, test_tokencache, test_tokenfailure,
test_auth): a sandbox with one org, settings for it, the token endpoint's counter.

A module uses the fixtures by name: ``sandbox = tokens.sandbox`` and ``sb = tokens.sb``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from etbridge.oauth import TokenResponse
from etbridge.settings import Settings
from etbridge.tokencache import TokenCache
from tests.support.sandbox import Sandbox


def wait_for(condition: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=1, bookings=1, rate_limit=100_000) as sb:
        yield sb


@pytest.fixture
def sb(sandbox: Sandbox) -> Sandbox:
    """The module's sandbox with counters at zero."""
    sandbox.reset()
    return sandbox


def make_settings(sb: Sandbox, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "client_id": sb.client_id,
        "client_secret": sb.client_secret,
        "api_url": sb.url,
        "token_url": sb.token_url,
        "redis_url": redis_url,
    }
    values.update(overrides)
    return Settings(**values)


def token_requests(sb: Sandbox) -> int:
    return int(sb.counters()["token_requests"])


def now_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BogusTokens(TokenCache):
    """A token endpoint that hands out tokens the API does not know."""

    def _request_token(self) -> TokenResponse:
        return TokenResponse(f"bogus-{time.monotonic_ns()}", 7200)
