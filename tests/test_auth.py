"""The shared token cache and BearerAuth, against a real Redis and the real sandbox."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from cryptography.fernet import Fernet

from etbridge import keys, redisconn
from etbridge.auth import BearerAuth
from etbridge.backoff import exponential as backoff_delay
from etbridge.backoff import max_attempts_in as max_requests_in
from etbridge.errors import AuthenticationError, MalformedResponse, TransportError
from etbridge.oauth import DEFAULT_EXPIRES_IN, TokenResponse, parse_token_response
from etbridge.replies import text
from etbridge.settings import Settings, SettingsError
from etbridge.tokencache import TokenCache, fingerprint, refresh_leeway
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


# --- pure helpers -------------------------------------------------------------------


def test_leeway_is_five_minutes_or_ten_percent() -> None:
    assert refresh_leeway(7200) == 300
    assert refresh_leeway(10) == pytest.approx(1.0)
    assert refresh_leeway(3000) == 300


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 30, 900) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]
    assert backoff_delay(10_000, 30, 900) == 900
    # Requests at 0, 1, 3, 7 s fit in 8 s; the next one is due at 15 s.
    assert max_requests_in(8, 1, 900) == 4
    assert max_requests_in(0.5, 1, 900) == 1


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


# --- fetching and caching -------------------------------------------------------------


def test_cold_get_fetches_once_and_caches_with_a_ttl(
    sb: Sandbox, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etbridge.auth")
    cache = TokenCache(r, make_settings(sb, redis_url))
    token = cache.get()
    assert cache.get() == token
    assert token_requests(sb) == 1
    assert cache.cache_id == keys.digest(sb.token_url, sb.client_id, "crm_read")
    ttl = r.pttl(keys.token(cache.cache_id))
    assert 0 < ttl <= 7200 * 1000
    status = cache.status()
    assert status["expires_at"] and status["fetched_at"]
    assert status["error"] is None and status["next_attempt_at"] is None
    assert token not in repr(status)
    fetched = [rec.getMessage() for rec in caplog.records if "token fetched" in rec.getMessage()]
    assert fetched == [f"token fetched expires_in=7200 cache={cache.cache_id}"]


def test_status_without_any_token_reads_nothing_from_the_api(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    assert cache.status() == {
        "expires_at": None,
        "fetched_at": None,
        "error": None,
        "error_description": None,
        "next_attempt_at": None,
    }
    assert token_requests(sb) == 0


def test_many_threads_cold_make_one_token_request(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    settings = make_settings(sb, redis_url)
    # One cache per thread, as separate processes would have.
    caches = [TokenCache(redisconn.connect(redis_url), settings) for _ in range(16)]
    barrier = threading.Barrier(len(caches))
    tokens: list[str] = []

    def run(cache: TokenCache) -> None:
        barrier.wait()
        tokens.append(cache.get())

    threads = [threading.Thread(target=run, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(tokens) == 16 and len(set(tokens)) == 1
    assert token_requests(sb) == 1


def test_invalidate_is_compare_and_delete(sb: Sandbox, r: redis.Redis, redis_url: str) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    token = cache.get()
    assert cache.invalidate("not-the-cached-token") is False
    assert cache.get() == token
    assert cache.invalidate(token) is True
    assert cache.invalidate(token) is False
    fresh = cache.get()
    assert fresh != token
    assert cache.invalidate(token) is False  # a late 401 for the old token changes nothing
    assert cache.get() == fresh
    assert token_requests(sb) == 2


def test_an_older_fetch_never_overwrites_a_newer_token(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    token = cache.get()
    fetched_at = int(r.hget(keys.token(cache.cache_id), "fetched_at_ms") or 0)
    cache._store(TokenResponse("stale-token", 7200), fetched_at - 1000)
    assert cache.get() == token


def test_early_refresh_by_one_caller_while_the_token_is_valid(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    old = cache.get()
    key = keys.token(cache.cache_id)
    # 200 s left of 7200: inside the 300 s leeway, above the 150 s margin.
    r.pexpire(key, 200_000)
    lock = keys.token_lock(cache.cache_id)
    r.set(lock, "someone-else", px=60_000)
    # Another process is refreshing: nobody waits, the current token is used.
    started = time.monotonic()
    assert cache.get() == old
    assert time.monotonic() - started < 5
    assert token_requests(sb) == 1
    r.delete(lock)
    new = cache.get()
    assert new != old
    assert token_requests(sb) == 2
    assert r.pttl(key) > 7000 * 1000
    assert cache.get() == new


def test_a_nearly_expired_token_is_not_handed_out(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url), wait_timeout=0.5)
    old = cache.get()
    r.pexpire(keys.token(cache.cache_id), 100_000)  # below the 150 s margin
    r.set(keys.token_lock(cache.cache_id), "someone-else", px=60_000)
    with pytest.raises(TransportError, match=r"within 0\.5s"):
        cache.get()
    r.delete(keys.token_lock(cache.cache_id))
    assert cache.get() != old


def test_a_dead_holders_lock_expires_and_a_waiter_takes_over(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url), lock_ttl=1.0, wait_timeout=10)
    r.set(keys.token_lock(cache.cache_id), "dead-holder", px=800)
    started = time.monotonic()
    cache.get()
    assert 0.5 < time.monotonic() - started < 8
    assert token_requests(sb) == 1


# --- failures ---------------------------------------------------------------------------


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
    failure = r.hgetall(keys.token_failure(cache.cache_id))
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
    failure_key = keys.token_failure(cache.cache_id)
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


def now_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_unknown_scope_is_an_authentication_error(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url, scope="crm_everything"))
    with pytest.raises(AuthenticationError) as exc:
        cache.get()
    assert exc.value.code == "invalid_scope"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


# --- BearerAuth ---------------------------------------------------------------------------


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


class BogusTokens(TokenCache):
    """A token endpoint that hands out tokens the API does not know."""

    def _request_token(self) -> TokenResponse:
        return TokenResponse(f"bogus-{time.monotonic_ns()}", 7200)


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


# --- secrets ----------------------------------------------------------------------------


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


# --- encryption at rest -------------------------------------------------------------------


def test_fernet_encrypts_the_token_at_rest(sb: Sandbox, r: redis.Redis, redis_url: str) -> None:
    key = Fernet.generate_key().decode()
    cache = TokenCache(r, make_settings(sb, redis_url, token_encryption_key=key))
    token = cache.get()
    raw = r.hgetall(keys.token(cache.cache_id))
    assert raw[b"enc"] == b"fernet"
    assert all(token.encode() not in value for value in raw.values())
    assert Fernet(key.encode()).decrypt(raw[b"token"]).decode() == token
    assert text(raw[b"fp"]) == fingerprint(token)
    # Another process with the same key reads it without a request.
    other = TokenCache(redisconn.connect(redis_url), cache_settings(sb, redis_url, key))
    assert other.get() == token
    assert token_requests(sb) == 1
    # A 401 invalidation works on the ciphertext too (by fingerprint).
    assert other.invalidate(token) is True


def cache_settings(sb: Sandbox, redis_url: str, key: str) -> Settings:
    return make_settings(sb, redis_url, token_encryption_key=key)


def test_without_a_key_the_token_is_stored_plain(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    token = cache.get()
    assert r.hget(keys.token(cache.cache_id), "token") == token.encode()
    assert r.hget(keys.token(cache.cache_id), "enc") == b""


def test_a_process_with_another_key_replaces_the_token(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    first = TokenCache(r, cache_settings(sb, redis_url, Fernet.generate_key().decode()))
    token = first.get()
    second = TokenCache(r, cache_settings(sb, redis_url, Fernet.generate_key().decode()))
    assert second.get() != token
    assert token_requests(sb) == 2


def test_a_malformed_encryption_key_is_a_settings_error(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    with pytest.raises(SettingsError, match="TOKEN_ENCRYPTION_KEY") as exc:
        TokenCache(r, cache_settings(sb, redis_url, "not-a-fernet-key-but-secret"))
    assert "not-a-fernet-key" not in str(exc.value)
