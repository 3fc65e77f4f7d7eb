"""One OAuth client-credentials token for the whole fleet, cached in Redis.

Every process on every host shares one token per (token URL, client id,
scope), fetched by one process at a time under a ``redis.lock.Lock``; the
others wait for it. Staleness is decided by Redis alone (key TTLs and
``TIME``), so hosts with skewed clocks agree. A failed request is remembered
by :class:`~etbridge.tokenfailure.FailureMemory`, so the fleet backs off
together. The protocol, its keys and failure cases: docs/token.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis
import requests
from cryptography.fernet import Fernet, InvalidToken
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from etbridge import backoff, redisconn
from etbridge.errors import AuthenticationError, RetriableError, TransportError
from etbridge.oauth import TokenEndpoint, TokenResponse
from etbridge.replies import optional_int, optional_text
from etbridge.settings import Settings, SettingsError, mask_url
from etbridge.timefmt import from_epoch_ms
from etbridge.tokenfailure import FailureMemory

# The whole token concern logs under one name, whichever module does the work.
log = logging.getLogger("etbridge.auth")

MAX_LEEWAY = 300.0
"""Early refresh starts at most this many seconds before expiry ..."""
LEEWAY_FRACTION = 0.10
"""... or at this fraction of the lifetime, whichever is smaller."""
JITTER_FRACTION = 0.2
"""Each caller shortens the leeway by up to this fraction, so hosts don't align."""

AUTH_BACKOFF_BASE = 30.0
AUTH_BACKOFF_CAP = 900.0
TRANSIENT_BACKOFF_BASE = 2.0
TRANSIENT_BACKOFF_CAP = 60.0

# Store a freshly fetched token unless a newer one is already there (fence: a
# holder whose lock expired mid-fetch must not overwrite its successor's token).
# KEYS[1] token hash
# ARGV[1] fetched_at_ms (Redis time when the request started)
# ARGV[2] expires_at_ms  ARGV[3] lifetime_ms  ARGV[4] stored token value
# ARGV[5] enc ("fernet" or "")  ARGV[6] fp (fingerprint of the token)
# Returns 1 when stored, 0 when a newer token won.
STORE_TOKEN = """
local current = tonumber(redis.call('HGET', KEYS[1], 'fetched_at_ms') or '0')
if current > tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fetched_at_ms', ARGV[1], 'expires_at_ms', ARGV[2],
           'lifetime_ms', ARGV[3], 'token', ARGV[4], 'enc', ARGV[5], 'fp', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""  # noqa: S105  (a Lua script named for what it does, not a password)

# Drop the cached token only if it is still the one that got the 401, so a
# stampede of 401s for one revoked token causes one refetch, not N.
# KEYS[1] token hash   ARGV[1] fp of the token that was refused
# Returns 1 when deleted.
INVALIDATE_TOKEN = """
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""  # noqa: S105  (a Lua script named for what it does, not a password)


def refresh_leeway(lifetime: float) -> float:
    """Seconds before expiry at which a token is refreshed: min(5 min, 10% of lifetime)."""
    return min(MAX_LEEWAY, LEEWAY_FRACTION * lifetime)


def fingerprint(value: str) -> str:
    """A short hash that identifies a token in Redis without revealing it."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Snapshot:
    """One read of the shared state: the token, its remaining life, the failure record."""

    now_ms: int
    token: str | None
    fp: str | None
    pttl_ms: int
    lifetime_ms: int
    failure: dict[str, str]


class TokenCache:
    """The fleet's shared client-credentials token for one (token URL, client id, scope).

    ``session`` is used for the token endpoint only (never give it a
    :class:`~etbridge.auth.BearerAuth`). The keyword arguments exist for tests
    and benchmarks; production uses the defaults:

    * ``timeout``: seconds one token request may take (``settings.http_timeout``);
    * ``lock_ttl``: seconds a fetch lock lives unless renewed (``timeout + 5``);
      a holder that dies frees it after this long;
    * ``wait_timeout``: longest a caller waits for another process's fetch
      (``lock_ttl + 5``, so a waiter outlives a dead holder's lock);
    * ``attempts``: token requests per call for transient failures (3);
    * ``auth_backoff`` / ``auth_backoff_cap``: the fleet's backoff after a
      refused credential (30 s doubling to 15 min);
    * ``transient_backoff`` / ``transient_backoff_cap``: the same after the
      in-call retries of a transient failure are spent (2 s → 60 s);
    * ``leeway``: fixed early-refresh leeway in seconds (default: per token,
      :func:`refresh_leeway`).
    """

    def __init__(  # noqa: PLR0913  (keyword-only knobs with defaults, for tests and tuning)
        self,
        redis: redis.Redis,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        timeout: float | None = None,
        lock_ttl: float | None = None,
        wait_timeout: float | None = None,
        attempts: int = 3,
        auth_backoff: float = AUTH_BACKOFF_BASE,
        auth_backoff_cap: float = AUTH_BACKOFF_CAP,
        transient_backoff: float = TRANSIENT_BACKOFF_BASE,
        transient_backoff_cap: float = TRANSIENT_BACKOFF_CAP,
        leeway: float | None = None,
    ) -> None:
        self._redis = redis
        self.timeout = timeout if timeout is not None else settings.http_timeout
        self.lock_ttl = lock_ttl if lock_ttl is not None else self.timeout + 5.0
        self.wait_timeout = wait_timeout if wait_timeout is not None else self.lock_ttl + 5.0
        self.attempts = max(1, attempts)
        self.auth_backoff = auth_backoff
        self.auth_backoff_cap = auth_backoff_cap
        self.transient_backoff = transient_backoff
        self.transient_backoff_cap = transient_backoff_cap
        self.leeway = leeway
        self._endpoint = TokenEndpoint(settings, session=session, timeout=self.timeout)
        self._credentials = credentials = self._endpoint.credentials
        self._cache_id = credentials.cache_id
        ks = settings.keyspace
        self._key = ks.token(self._cache_id)
        self._lock_key = ks.token_lock(self._cache_id)
        # A slow, salted hash: enough to tell "the secret changed" without
        # putting anything in Redis that helps guess a weak secret.
        secret = credentials.secret.get_secret_value().encode()
        secret_fp = hashlib.pbkdf2_hmac("sha256", secret, self._cache_id.encode(), 10_000)[:6].hex()
        self._failures = FailureMemory(redis, ks.token_failure(self._cache_id), secret_fp)
        self._fernet: Fernet | None = None
        if settings.token_encryption_key is not None:
            try:
                self._fernet = Fernet(settings.token_encryption_key.get_secret_value().encode())
            except (ValueError, TypeError):
                raise SettingsError(
                    "configuration error: ETBRIDGE_TOKEN_ENCRYPTION_KEY: expected a Fernet key "
                    "(32 url-safe base64-encoded bytes)"
                ) from None
        self._store_script = redis.register_script(STORE_TOKEN)
        self._invalidate_script = redis.register_script(INVALIDATE_TOKEN)

    def __repr__(self) -> str:
        c = self._credentials
        return (
            f"TokenCache(cache_id={self._cache_id!r}, token_url={mask_url(c.token_url)!r}, "
            f"client_id={c.client_id!r}, scope={c.scope!r})"
        )

    @property
    def cache_id(self) -> str:
        """The hash naming this token's keys (token URL + client id + scope)."""
        return self._cache_id

    # --- public API ---------------------------------------------------------------

    def get(self) -> str:
        """A valid access token, fetching it or waiting for another process's fetch.

        Raises :class:`AuthenticationError` when the credentials are refused
        (now or within the remembered backoff), :class:`RetriableError`
        subclasses when the token endpoint is unreachable or no token
        appeared within ``wait_timeout``.
        """
        deadline = time.monotonic() + self.wait_timeout
        pause = 0.01
        while True:
            snap = self._read()
            if snap.token is not None and self._usable(snap):
                if self._due(snap) and not self._backing_off(snap):
                    return self._refresh_early(snap.token)
                return snap.token
            self._raise_if_backing_off(snap)
            lock = self._acquire()
            if lock is not None:
                try:
                    # Double-check under the lock: the previous holder may
                    # have stored a token or a failure since our read.
                    snap = self._read()
                    if snap.token is not None and self._usable(snap):
                        return snap.token
                    self._raise_if_backing_off(snap)
                    return self._fetch(lock, attempts=self.attempts)
                finally:
                    self._release(lock)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(
                    f"no token for cache {self._cache_id} within {self.wait_timeout:g}s "
                    "(another process holds the fetch lock)"
                )
            time.sleep(backoff.jitter(min(pause, remaining), 0.8, 1.2))
            pause = min(pause * 1.5, 0.1)

    def invalidate(self, token: str) -> bool:
        """Drop the cached token if it is still ``token`` (after a 401); True if dropped."""
        removed = bool(self._invalidate_script(keys=[self._key], args=[fingerprint(token)]))
        if removed:
            log.info("token invalidated after 401 cache=%s", self._cache_id)
        return removed

    def status(self) -> dict[str, Any]:
        """The token's state for ``etbridge status``; reads Redis only, never fetches.

        ``{"expires_at", "fetched_at", "error", "error_description",
        "next_attempt_at"}`` (ISO 8601 UTC strings or None); never the token.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._key, ["expires_at_ms", "fetched_at_ms"])
        pipe.hmget(self._failures.key, ["code", "description", "next_attempt_at_ms"])
        token_fields, failure_fields = pipe.execute()
        return {
            "expires_at": from_epoch_ms(optional_int(token_fields[0])),
            "fetched_at": from_epoch_ms(optional_int(token_fields[1])),
            "error": optional_text(failure_fields[0]),
            "error_description": optional_text(failure_fields[1]),
            "next_attempt_at": from_epoch_ms(optional_int(failure_fields[2])),
        }

    # --- reading the shared state ---------------------------------------------------

    def _read(self) -> _Snapshot:
        pipe = self._redis.pipeline(transaction=False)
        clock = redisconn.queue_time(self._redis, pipe)
        pipe.hmget(self._key, ["token", "enc", "fp", "lifetime_ms"])
        pipe.pttl(self._key)
        pipe.hgetall(self._failures.key)
        replies = pipe.execute()
        (seconds, micros) = clock or replies.pop(0)
        fields, pttl, failure = replies
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        stored, enc, fp, lifetime = fields
        return _Snapshot(
            now_ms=now_ms,
            token=self._decode(stored, enc),
            fp=optional_text(fp),
            pttl_ms=int(pttl),
            lifetime_ms=optional_int(lifetime) or 0,
            failure={optional_text(k) or "": optional_text(v) or "" for k, v in failure.items()},
        )

    def _decode(self, stored: bytes | None, enc: bytes | None) -> str | None:
        if stored is None:
            return None
        if not enc:
            return stored.decode()
        if self._fernet is None:
            log.warning(
                "cached token is encrypted but ETBRIDGE_TOKEN_ENCRYPTION_KEY is not set; "
                "fetching a new one cache=%s",
                self._cache_id,
            )
            return None
        try:
            return self._fernet.decrypt(stored).decode()
        except InvalidToken:
            log.warning(
                "cached token does not decrypt with ETBRIDGE_TOKEN_ENCRYPTION_KEY; "
                "fetching a new one cache=%s",
                self._cache_id,
            )
            return None

    def _leeway_ms(self, lifetime_ms: int) -> float:
        if self.leeway is not None:
            return self.leeway * 1000
        return refresh_leeway(lifetime_ms / 1000) * 1000

    def _threshold_ms(self, lifetime_ms: int) -> float:
        """Remaining life below which a caller tries to refresh (leeway minus jitter)."""
        jitter = JITTER_FRACTION * random.random()  # noqa: S311  (spreads refreshes; not a secret)
        return self._leeway_ms(lifetime_ms) * (1 - jitter)

    def _margin_ms(self, lifetime_ms: int) -> float:
        """Remaining life below which a token is not handed out at all.

        Half the leeway: enough for a request to reach the API before the
        token dies, while a normal early refresh has long replaced it.
        """
        return self._leeway_ms(lifetime_ms) / 2

    def _usable(self, snap: _Snapshot) -> bool:
        return snap.pttl_ms > self._margin_ms(snap.lifetime_ms)

    def _due(self, snap: _Snapshot) -> bool:
        """Whether this caller should try an early refresh."""
        return snap.pttl_ms < self._threshold_ms(snap.lifetime_ms)

    def _backing_off(self, snap: _Snapshot) -> bool:
        return self._failures.backing_off(snap.failure, snap.now_ms)

    def _raise_if_backing_off(self, snap: _Snapshot) -> None:
        self._failures.raise_if_backing_off(snap.failure, snap.now_ms)

    # --- the lock ------------------------------------------------------------------

    def _acquire(self) -> Lock | None:
        # One Lock object per attempt, so its token is this call's, not the thread's.
        lock = Lock(self._redis, self._lock_key, timeout=self.lock_ttl, thread_local=False)
        return lock if lock.acquire(blocking=False) else None

    def _release(self, lock: Lock) -> None:
        # Expired meanwhile (a slow request): the successor's lock is not ours to drop.
        with contextlib.suppress(LockNotOwnedError):
            lock.release()

    def _extend(self, lock: Lock) -> None:
        # Lost (expired) meanwhile: go on; STORE_TOKEN's fence keeps a newer token.
        with contextlib.suppress(LockNotOwnedError):
            lock.reacquire()

    # --- fetching ------------------------------------------------------------------

    def _refresh_early(self, current: str) -> str:
        """Refresh a still-valid token if this caller wins the lock; never wait."""
        lock = self._acquire()
        if lock is None:
            return current
        try:
            snap = self._read()
            if snap.token is not None and snap.token != current:
                return snap.token  # someone refreshed between our read and the lock
            return self._fetch(lock, attempts=1)
        except (AuthenticationError, RetriableError) as exc:
            # The current token still works; the failure is recorded, so the
            # fleet does not retry before its backoff ends.
            log.warning(
                "early token refresh failed (%s); using the current token cache=%s",
                type(exc).__name__,
                self._cache_id,
            )
            return current
        finally:
            self._release(lock)

    def _fetch(self, lock: Lock, *, attempts: int) -> str:
        """Request a token (retrying transient failures), store it, return it."""
        attempt = 0
        while True:
            attempt += 1
            self._extend(lock)
            started_ms = self._now_ms()
            try:
                response = self._request_token()
            except AuthenticationError as exc:
                self._record_failure(exc, base=self.auth_backoff, cap=self.auth_backoff_cap)
                raise
            except RetriableError as exc:
                wait = exc.retry_after or backoff.jitter(
                    backoff.exponential(attempt, 0.5, 5.0), 1.0, 1.5
                )
                if attempt < attempts and wait <= self.timeout:
                    log.info(
                        "token request failed (%s), retrying in %.1fs cache=%s",
                        type(exc).__name__,
                        wait,
                        self._cache_id,
                    )
                    time.sleep(wait)
                    continue
                self._record_failure(
                    exc,
                    base=self.transient_backoff,
                    cap=self.transient_backoff_cap,
                    min_delay=exc.retry_after or 0.0,
                )
                raise
            self._store(response, started_ms)
            return response.access_token

    def _request_token(self) -> TokenResponse:
        """One token request (a hook for tests: subclasses may block here to play a
        slow or dead lock holder)."""
        return self._endpoint.request()

    def _store(self, response: TokenResponse, started_ms: int) -> None:
        lifetime_ms = int(response.expires_in * 1000)
        # Expiry counts from when the request left, so the cached expiry is
        # never later than the server's.
        expires_at_ms = started_ms + lifetime_ms
        if self._fernet is not None:
            value, enc = self._fernet.encrypt(response.access_token.encode()).decode(), "fernet"
        else:
            value, enc = response.access_token, ""
        stored = self._store_script(
            keys=[self._key],
            args=[
                started_ms,
                expires_at_ms,
                lifetime_ms,
                value,
                enc,
                fingerprint(response.access_token),
            ],
        )
        self._failures.clear()
        log.info(
            "token fetched expires_in=%g cache=%s%s",
            response.expires_in,
            self._cache_id,
            "" if stored else " (a newer token was already cached)",
        )

    def _record_failure(
        self,
        exc: AuthenticationError | RetriableError,
        *,
        base: float,
        cap: float,
        min_delay: float = 0.0,
    ) -> None:
        recorded = self._failures.record(
            exc, now_ms=self._now_ms(), base=base, cap=cap, min_delay=min_delay
        )
        log.warning(
            "token request failed code=%s attempts=%s next_attempt_at=%s cache=%s",
            recorded.code,
            recorded.attempts,
            from_epoch_ms(recorded.next_attempt_at_ms),
            self._cache_id,
        )

    def _now_ms(self) -> int:
        seconds, micros = self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
