"""The fleet's memory of a failed token request (tokenfailure.py) and its backoff.

Against a real Redis and the real sandbox's token endpoint.
"""

from __future__ import annotations

import logging
import time

import pytest
import redis

from etbridge import keys
from etbridge.errors import AuthenticationError, TransportError
from etbridge.tokencache import TokenCache
from tests.support import tokens
from tests.support.sandbox import Sandbox
from tests.support.tokens import (
    closed_port,
    make_settings,
    now_ms,
    token_requests,
    wait_for,
)

# The module's sandbox (one org, one booking) and, per test, the same with counters at zero.
sandbox = tokens.sandbox
sb = tokens.sb


def test_wrong_secret_is_one_clear_error_then_remembered(
    sb: Sandbox, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-0123456789"
    cache = TokenCache(r, make_settings(sb, redis_url, client_secret=wrong))
    with pytest.raises(AuthenticationError) as first:
        cache.get()
    assert first.value.code == "invalid_client"
    assert "Client authentication failed" in str(first.value)
    assert token_requests(sb) == 1
    # Inside the 30 s backoff: the same error at once, without a request.
    for _ in range(5):
        with pytest.raises(AuthenticationError) as again:
            cache.get()
        assert again.value.code == "invalid_client"
        assert "remembered" in str(again.value)
    assert token_requests(sb) == 1
    status = cache.status()
    assert status["error"] == "invalid_client"
    assert "Client authentication failed" in (status["error_description"] or "")
    assert status["next_attempt_at"] is not None and status["expires_at"] is None
    failure = r.hgetall(keys.DEFAULT.token_failure(cache.cache_id))
    assert failure[b"attempts"] == b"1"
    texts = [str(first.value), repr(first.value), str(again.value), caplog.text, repr(status)]
    texts += [repr(v) for v in failure.values()]
    assert not any(wrong in text for text in texts)

    # The operator fixes the secret: the new secret is tried at once, and
    # success clears the remembered failure.
    fixed = TokenCache(r, make_settings(sb, redis_url))
    assert fixed.get()
    assert token_requests(sb) == 2
    assert fixed.status()["error"] is None


def test_the_backoff_doubles_per_failed_attempt(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(
        r, make_settings(sb, redis_url, client_secret="nope"), auth_backoff=0.2, auth_backoff_cap=2
    )
    failure_key = keys.DEFAULT.token_failure(cache.cache_id)
    delays = []
    for attempts in range(1, 5):
        wait_for(lambda: int(r.hget(failure_key, "next_attempt_at_ms") or 0) <= now_ms(r))
        with pytest.raises(AuthenticationError):
            cache.get()
        record = r.hgetall(failure_key)
        assert int(record[b"attempts"]) == attempts
        delays.append(int(record[b"next_attempt_at_ms"]) - int(record[b"failed_at_ms"]))
    assert delays == [200, 400, 800, 1600]
    assert token_requests(sb) == 4


def test_unreachable_token_endpoint_is_retried_then_remembered_briefly(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/oauth/token"
    cache = TokenCache(
        r, make_settings(sb, redis_url, token_url=url), timeout=2, attempts=2, transient_backoff=30
    )
    with pytest.raises(TransportError) as exc:
        cache.get()
    assert "failed: ConnectionError" in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    status = cache.status()
    assert status["error"] == "unreachable" and status["next_attempt_at"]
    started = time.monotonic()
    with pytest.raises(TransportError) as remembered:
        cache.get()
    assert time.monotonic() - started < 2
    assert remembered.value.retry_after is not None and remembered.value.retry_after > 20
