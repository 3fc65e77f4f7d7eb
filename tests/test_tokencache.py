"""The shared token cache (tokencache.py): fetch once, cache, refresh, lock, encrypt at rest.

Against a real Redis and the real sandbox's token endpoint.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis
from cryptography.fernet import Fernet

from etbridge import keys, redisconn
from etbridge.errors import TransportError
from etbridge.oauth import TokenResponse
from etbridge.replies import text
from etbridge.settings import Settings, SettingsError
from etbridge.tokencache import TokenCache, fingerprint, refresh_leeway
from tests.support import tokens
from tests.support.sandbox import Sandbox
from tests.support.tokens import (
    make_settings,
    token_requests,
)

# The module's sandbox (one org, one booking) and, per test, the same with counters at zero.
sandbox = tokens.sandbox
sb = tokens.sb


def test_leeway_is_five_minutes_or_ten_percent() -> None:
    assert refresh_leeway(7200) == 300
    assert refresh_leeway(10) == pytest.approx(1.0)
    assert refresh_leeway(3000) == 300


def test_cold_get_fetches_once_and_caches_with_a_ttl(
    sb: Sandbox, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etbridge.auth")
    cache = TokenCache(r, make_settings(sb, redis_url))
    token = cache.get()
    assert cache.get() == token
    assert token_requests(sb) == 1
    assert cache.cache_id == keys.digest(sb.token_url, sb.client_id, "crm_read")
    ttl = r.pttl(keys.DEFAULT.token(cache.cache_id))
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
    fetched_at = int(r.hget(keys.DEFAULT.token(cache.cache_id), "fetched_at_ms") or 0)
    cache._store(TokenResponse("stale-token", 7200), fetched_at - 1000)
    assert cache.get() == token


def test_early_refresh_by_one_caller_while_the_token_is_valid(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url))
    old = cache.get()
    key = keys.DEFAULT.token(cache.cache_id)
    # 200 s left of 7200: inside the 300 s leeway, above the 150 s margin.
    r.pexpire(key, 200_000)
    lock = keys.DEFAULT.token_lock(cache.cache_id)
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
    r.pexpire(keys.DEFAULT.token(cache.cache_id), 100_000)  # below the 150 s margin
    r.set(keys.DEFAULT.token_lock(cache.cache_id), "someone-else", px=60_000)
    with pytest.raises(TransportError, match=r"within 0\.5s"):
        cache.get()
    r.delete(keys.DEFAULT.token_lock(cache.cache_id))
    assert cache.get() != old


def test_a_dead_holders_lock_expires_and_a_waiter_takes_over(
    sb: Sandbox, r: redis.Redis, redis_url: str
) -> None:
    cache = TokenCache(r, make_settings(sb, redis_url), lock_ttl=1.0, wait_timeout=10)
    r.set(keys.DEFAULT.token_lock(cache.cache_id), "dead-holder", px=800)
    started = time.monotonic()
    cache.get()
    assert 0.5 < time.monotonic() - started < 8
    assert token_requests(sb) == 1


def test_fernet_encrypts_the_token_at_rest(sb: Sandbox, r: redis.Redis, redis_url: str) -> None:
    key = Fernet.generate_key().decode()
    cache = TokenCache(r, make_settings(sb, redis_url, token_encryption_key=key))
    token = cache.get()
    raw = r.hgetall(keys.DEFAULT.token(cache.cache_id))
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
    assert r.hget(keys.DEFAULT.token(cache.cache_id), "token") == token.encode()
    assert r.hget(keys.DEFAULT.token(cache.cache_id), "enc") == b""


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
