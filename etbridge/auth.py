"""One OAuth client-credentials token for the whole fleet, cached in Redis.

Every Python OAuth library keeps its token per process, so N workers ask for
N tokens, all at once when they expire. Here every process on every host
shares one token per (token URL, client id, scope), stored in Redis, fetched
by exactly one process at a time.

Redis layout (helpers in :mod:`etbridge.keys`, ``cache_id`` is a hash of token
URL + client id + scope, so no secret or raw URL appears in a key)::

    etb:token:<cache_id>           Hash  token (plain or Fernet), enc, fp,
                                         expires_at_ms, fetched_at_ms, lifetime_ms;
                                         PEXPIREAT at the token's expiry
    etb:token:<cache_id>:lock      String owner id; SET NX PX, compare-and-delete
    etb:token:<cache_id>:failure   Hash  kind (auth|transient), code, description,
                                         attempts, next_attempt_at_ms, secret_fp

Staleness is decided by Redis alone (key TTLs and ``TIME``), so hosts with
skewed clocks agree on when a token must be refreshed.

How :meth:`TokenCache.get` behaves:

* a usable token (more than ``margin`` left) is returned at once; when less
  than the leeway is left, the one caller that wins the lock refreshes it
  synchronously (a single attempt), everyone else keeps using the current one;
* no usable token: one caller takes the lock and fetches (retrying transient
  failures a few times), the others poll Redis until the token appears, the
  failure is recorded, or their wait runs out; a holder that died loses the
  lock by expiry and the next waiter takes over;
* a refused credential is remembered in Redis with an exponential backoff
  (30 s doubling to 15 min): inside it every caller of the fleet gets the
  remembered :class:`AuthenticationError` without a request. The record
  carries a fingerprint of the secret, so a corrected secret is tried at once.

Errors raised (see :mod:`etbridge.errors`): :class:`AuthenticationError` for a
refused credential (``code`` = ``invalid_client`` …) or a second 401;
:class:`TransportError`, :class:`ServerError`, :class:`RateLimited`,
:class:`MalformedResponse` (all :class:`RetriableError`) for transient trouble
with the token endpoint.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
import requests.auth
from cryptography.fernet import Fernet, InvalidToken

from etbridge import keys
from etbridge.errors import (
    AuthenticationError,
    MalformedResponse,
    RateLimited,
    RetriableError,
    ServerError,
    TransportError,
)
from etbridge.settings import Settings, SettingsError, mask_url

log = logging.getLogger("etbridge.auth")

DEFAULT_EXPIRES_IN = 7200.0
"""Lifetime assumed when the token response has no ``expires_in`` (Event Temple: 2 h)."""

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
FAILURE_RECORD_TTL_MS = 7 * 86400 * 1000
"""A failure record outlives any backoff; it goes on the next success."""

_ERROR_DESCRIPTION_MAX = 300

# --- Lua scripts (each touches one key, so they run on Redis Cluster too) -------

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
"""

# Drop the cached token only if it is still the one that got the 401, so a
# stampede of 401s for one revoked token causes one refetch, not N.
# KEYS[1] token hash   ARGV[1] fp of the token that was refused
# Returns 1 when deleted.
INVALIDATE_TOKEN = """
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Release the fetch lock only if we still own it.
# KEYS[1] lock   ARGV[1] owner id
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Extend the fetch lock only if we still own it (before each attempt).
# KEYS[1] lock   ARGV[1] owner id   ARGV[2] ttl_ms
EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Remember a failed token request and when the fleet may try again.
# The attempt counter restarts when the kind or the secret changed.
# KEYS[1] failure hash
# ARGV[1] kind ("auth" | "transient")  ARGV[2] code  ARGV[3] description
# ARGV[4] secret_fp  ARGV[5] now_ms (Redis TIME)  ARGV[6] base_ms  ARGV[7] cap_ms
# ARGV[8] min_delay_ms (a Retry-After)  ARGV[9] record ttl_ms
# ARGV[10] error class to raise again (a RetriableError subclass name, or "")
# Returns {attempts, next_attempt_at_ms}.
RECORD_FAILURE = """
local attempts = 0
if redis.call('HGET', KEYS[1], 'kind') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'secret_fp') == ARGV[4] then
  attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
end
attempts = attempts + 1
local delay = tonumber(ARGV[6]) * 2 ^ math.min(attempts - 1, 30)
delay = math.min(delay, tonumber(ARGV[7]))
delay = math.max(delay, tonumber(ARGV[8]))
local next_at = tonumber(ARGV[5]) + math.floor(delay)
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'code', ARGV[2], 'description', ARGV[3],
           'secret_fp', ARGV[4], 'attempts', attempts, 'failed_at_ms', ARGV[5],
           'next_attempt_at_ms', string.format('%d', next_at), 'class', ARGV[10])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return {attempts, string.format('%d', next_at)}
"""


# --- pure helpers ---------------------------------------------------------------


def refresh_leeway(lifetime: float) -> float:
    """Seconds before expiry at which a token is refreshed: min(5 min, 10% of lifetime)."""
    return min(MAX_LEEWAY, LEEWAY_FRACTION * lifetime)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Delay after the ``attempts``-th consecutive failure: base, 2·base, 4·base … ≤ cap."""
    return float(min(cap, base * 2 ** min(max(attempts, 1) - 1, 30)))


def max_requests_in(span: float, base: float, cap: float) -> int:
    """Most token requests the backoff allows within ``span`` seconds (first one included)."""
    count, elapsed = 1, 0.0
    while True:
        elapsed += backoff_delay(count, base, cap)
        if elapsed > span:
            return count
        count += 1


def fingerprint(value: str) -> str:
    """A short hash that identifies a token in Redis without revealing it."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TokenResponse:
    """The parts of a token endpoint answer etbridge uses."""

    access_token: str
    expires_in: float


def parse_token_response(body: Any) -> TokenResponse:
    """Read ``access_token`` and ``expires_in`` (default 7200 s); ignore ``created_at``.

    Raises :class:`MalformedResponse` when there is no usable token.
    """
    if not isinstance(body, dict):
        raise MalformedResponse("token endpoint answered 200 without a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise MalformedResponse("token endpoint answered 200 without an access_token")
    raw = body.get("expires_in")
    expires_in = DEFAULT_EXPIRES_IN
    if raw is not None and not isinstance(raw, bool):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value) and value > 0:
            expires_in = value
    return TokenResponse(access_token=token, expires_in=expires_in)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _int(raw: bytes | str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


_TRANSIENT_CLASSES: dict[str, type[RetriableError]] = {
    cls.__name__: cls for cls in (RateLimited, ServerError, TransportError, MalformedResponse)
}


@dataclass(frozen=True)
class _Snapshot:
    """One read of the shared state: the token, its remaining life, the failure record."""

    now_ms: int
    token: str | None
    fp: str | None
    pttl_ms: int
    lifetime_ms: int
    failure: dict[str, str]


# --- the cache --------------------------------------------------------------------


class TokenEndpoint:
    """The OAuth token endpoint: one client-credentials request, every failure typed.

    Used by :class:`TokenCache` (through the fleet's single-flight lock) and by
    ``etbridge check``, which asks for one token without touching Redis.
    """

    def __init__(
        self, settings: Settings, *, session: requests.Session | None = None, timeout: float
    ) -> None:
        self._token_url = settings.token_url
        self._client_id = settings.client_id
        self._scope = settings.scope
        self._secret = settings.client_secret
        self._session = session if session is not None else requests.Session()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"TokenEndpoint(url={mask_url(self._token_url)!r}, client_id={self._client_id!r})"

    def request(self) -> TokenResponse:
        """POST the client-credentials grant; map every failure to a typed error."""
        try:
            resp = self._session.post(
                self._token_url,
                json=self._grant(),
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                auth=_NoAuth(),
            )
        except requests.Timeout:
            raise TransportError(
                f"token request to {mask_url(self._token_url)} timed out after {self.timeout:g}s"
            ) from None
        except requests.RequestException as exc:
            # ``from None``: the chained exception's frames hold the request body.
            raise TransportError(
                f"token request to {mask_url(self._token_url)} failed: {type(exc).__name__}"
            ) from None
        status = resp.status_code
        if status == 200:
            try:
                body = resp.json()
            except ValueError:
                raise MalformedResponse(
                    "token endpoint answered 200 with a non-JSON body"
                ) from None
            return parse_token_response(body)
        if status == 429:
            raise RateLimited("token endpoint answered 429", retry_after=_retry_after(resp.headers))
        if status >= 500 or status == 408:
            raise ServerError(f"token endpoint answered {status}")
        code, description = self._error_details(resp)
        raise AuthenticationError(
            f"token endpoint refused the credentials ({code}): {description}", code=code
        )

    def _grant(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.get_secret_value(),
            "scope": self._scope,
        }

    def _error_details(self, resp: requests.Response) -> tuple[str, str]:
        """The RFC 6749 §5.2 ``error`` and ``error_description``, scrubbed of the secret."""
        code, description = f"http_{resp.status_code}", ""
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("error"), str) and body["error"]:
                code = body["error"]
            if isinstance(body.get("error_description"), str):
                description = body["error_description"]
        if not description:
            description = f"HTTP {resp.status_code} from the token endpoint"
        return self._scrub(code)[:64], self._scrub(description)[:_ERROR_DESCRIPTION_MAX]

    def _scrub(self, text: str) -> str:
        secret = self._secret.get_secret_value()
        return text.replace(secret, "***") if secret else text


def fetch_token(settings: Settings, session: requests.Session | None = None) -> TokenResponse:
    """One token request, outside the shared cache (``etbridge check``)."""
    return TokenEndpoint(settings, session=session, timeout=settings.http_timeout).request()


class TokenCache:
    """The fleet's shared client-credentials token for one (token URL, client id, scope).

    ``session`` is used for the token endpoint only (never give it a
    :class:`BearerAuth`). The keyword arguments exist for tests and benchmarks;
    production uses the defaults:

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

    def __init__(
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
        self._token_url = settings.token_url
        self._client_id = settings.client_id
        self._scope = settings.scope
        self._secret = settings.client_secret
        self._session = session if session is not None else requests.Session()
        self.timeout = timeout if timeout is not None else settings.http_timeout
        self.lock_ttl = lock_ttl if lock_ttl is not None else self.timeout + 5.0
        self.wait_timeout = wait_timeout if wait_timeout is not None else self.lock_ttl + 5.0
        self.attempts = max(1, attempts)
        self.auth_backoff = auth_backoff
        self.auth_backoff_cap = auth_backoff_cap
        self.transient_backoff = transient_backoff
        self.transient_backoff_cap = transient_backoff_cap
        self.leeway = leeway
        self._endpoint = TokenEndpoint(settings, session=self._session, timeout=self.timeout)
        self._cache_id = keys.digest(self._token_url, self._client_id, self._scope)
        self._key = keys.token(self._cache_id)
        self._lock_key = keys.token_lock(self._cache_id)
        self._failure_key = keys.token_failure(self._cache_id)
        # A slow, salted hash: enough to tell "the secret changed" without
        # putting anything in Redis that helps guess a weak secret.
        self._secret_fp = hashlib.pbkdf2_hmac(
            "sha256", self._secret.get_secret_value().encode(), self._cache_id.encode(), 10_000
        )[:6].hex()
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
        self._release_script = redis.register_script(RELEASE_LOCK)
        self._extend_script = redis.register_script(EXTEND_LOCK)
        self._failure_script = redis.register_script(RECORD_FAILURE)

    def __repr__(self) -> str:
        return (
            f"TokenCache(cache_id={self._cache_id!r}, token_url={mask_url(self._token_url)!r}, "
            f"client_id={self._client_id!r}, scope={self._scope!r})"
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
            owner = self._acquire()
            if owner is not None:
                try:
                    # Double-check under the lock: the previous holder may
                    # have stored a token or a failure since our read.
                    snap = self._read()
                    if snap.token is not None and self._usable(snap):
                        return snap.token
                    self._raise_if_backing_off(snap)
                    return self._fetch(owner, attempts=self.attempts)
                finally:
                    self._release(owner)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(
                    f"no token for cache {self._cache_id} within {self.wait_timeout:g}s "
                    "(another process holds the fetch lock)"
                )
            time.sleep(min(pause, remaining) * random.uniform(0.8, 1.2))
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
        pipe.hmget(self._failure_key, ["code", "description", "next_attempt_at_ms"])
        token_fields, failure_fields = pipe.execute()
        return {
            "expires_at": _iso(_int(token_fields[0])),
            "fetched_at": _iso(_int(token_fields[1])),
            "error": _text(failure_fields[0]),
            "error_description": _text(failure_fields[1]),
            "next_attempt_at": _iso(_int(failure_fields[2])),
        }

    # --- reading the shared state ---------------------------------------------------

    def _read(self) -> _Snapshot:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(self._key, ["token", "enc", "fp", "lifetime_ms"])
        pipe.pttl(self._key)
        pipe.hgetall(self._failure_key)
        (seconds, micros), fields, pttl, failure = pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        stored, enc, fp, lifetime = fields
        token = self._decode(stored, enc)
        return _Snapshot(
            now_ms=now_ms,
            token=token,
            fp=_text(fp),
            pttl_ms=int(pttl),
            lifetime_ms=_int(lifetime) or 0,
            failure={_text(k) or "": _text(v) or "" for k, v in failure.items()},
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
        return self._leeway_ms(lifetime_ms) * (1 - JITTER_FRACTION * random.random())

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
        failure = snap.failure
        if not failure or failure.get("secret_fp") != self._secret_fp:
            return False
        return snap.now_ms < (_int(failure.get("next_attempt_at_ms")) or 0)

    def _raise_if_backing_off(self, snap: _Snapshot) -> None:
        """Inside a remembered failure's backoff, raise it again without a request."""
        if not self._backing_off(snap):
            return
        failure = snap.failure
        next_ms = _int(failure.get("next_attempt_at_ms")) or snap.now_ms
        wait = max(0.0, (next_ms - snap.now_ms) / 1000)
        code = failure.get("code") or "unknown"
        description = failure.get("description") or ""
        if failure.get("kind") == "auth":
            raise AuthenticationError(
                f"token endpoint refused the credentials ({code}): {description} "
                f"[remembered; next token request in {wait:.0f}s]",
                code=code,
            )
        cls = _TRANSIENT_CLASSES.get(failure.get("class", ""), TransportError)
        raise cls(
            f"token endpoint unavailable ({code}): {description} "
            f"[remembered; next token request in {wait:.1f}s]",
            retry_after=wait,
        )

    # --- the lock ------------------------------------------------------------------

    def _acquire(self) -> str | None:
        owner = uuid.uuid4().hex
        if self._redis.set(self._lock_key, owner, nx=True, px=int(self.lock_ttl * 1000)):
            return owner
        return None

    def _release(self, owner: str) -> None:
        self._release_script(keys=[self._lock_key], args=[owner])

    def _extend(self, owner: str) -> None:
        self._extend_script(keys=[self._lock_key], args=[owner, int(self.lock_ttl * 1000)])

    # --- fetching ------------------------------------------------------------------

    def _refresh_early(self, current: str) -> str:
        """Refresh a still-valid token if this caller wins the lock; never wait."""
        owner = self._acquire()
        if owner is None:
            return current
        try:
            snap = self._read()
            if snap.token is not None and snap.token != current:
                return snap.token  # someone refreshed between our read and the lock
            return self._fetch(owner, attempts=1)
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
            self._release(owner)

    def _fetch(self, owner: str, *, attempts: int) -> str:
        """Request a token (retrying transient failures), store it, return it."""
        attempt = 0
        while True:
            attempt += 1
            self._extend(owner)
            started_ms = self._now_ms()
            try:
                response = self._request_token()
            except AuthenticationError as exc:
                self._record_failure("auth", exc, base=self.auth_backoff, cap=self.auth_backoff_cap)
                raise
            except RetriableError as exc:
                wait = exc.retry_after or backoff_delay(attempt, 0.5, 5.0) * random.uniform(1, 1.5)
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
                    "transient",
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
        self._redis.delete(self._failure_key)
        log.info(
            "token fetched expires_in=%g cache=%s%s",
            response.expires_in,
            self._cache_id,
            "" if stored else " (a newer token was already cached)",
        )

    def _record_failure(
        self,
        kind: str,
        exc: AuthenticationError | RetriableError,
        *,
        base: float,
        cap: float,
        min_delay: float = 0.0,
    ) -> None:
        if isinstance(exc, AuthenticationError):
            code, error_class = exc.code or "unknown", ""
        else:
            code = _TRANSIENT_CODES.get(type(exc), "temporarily_unavailable")
            error_class = type(exc).__name__
        description = str(exc)
        # The message embeds the code already; keep the server's words only.
        prefix = f"token endpoint refused the credentials ({code}): "
        description = description.removeprefix(prefix)
        attempts, next_ms = self._failure_script(
            keys=[self._failure_key],
            args=[
                kind,
                code,
                description,
                self._secret_fp,
                self._now_ms(),
                int(base * 1000),
                int(cap * 1000),
                int(min_delay * 1000),
                FAILURE_RECORD_TTL_MS,
                error_class,
            ],
        )
        log.warning(
            "token request failed code=%s attempts=%s next_attempt_at=%s cache=%s",
            code,
            int(attempts),
            _iso(_int(next_ms)),
            self._cache_id,
        )

    def _now_ms(self) -> int:
        seconds, micros = self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


_TRANSIENT_CODES: dict[type[RetriableError], str] = {
    RateLimited: "rate_limited",
    ServerError: "server_error",
    TransportError: "unreachable",
    MalformedResponse: "malformed_response",
}


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


class _NoAuth(requests.auth.AuthBase):
    """Keeps a session-level auth (say, a BearerAuth) off the token request."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


# --- the requests auth ------------------------------------------------------------


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer`` from the shared cache, with one retry after a 401.

    On a 401 it drops the cached token only if it is still the one that was
    refused, takes the new one (fetching or waiting for it) and resends the
    request once; a second 401 raises :class:`AuthenticationError`.
    """

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache

    def __repr__(self) -> str:
        return f"BearerAuth(cache={self.cache!r})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.cache.get()}"
        # Remember where a file-like body starts, to resend it after a 401.
        position: int | None = None
        tell = getattr(r.body, "tell", None)
        if callable(tell):
            try:
                position = int(tell())
            except OSError:
                position = None
        r.register_hook("response", self._make_hook(position))  # type: ignore[no-untyped-call]
        return r

    def _make_hook(self, position: int | None) -> Any:
        def hook(response: requests.Response, **kwargs: Any) -> requests.Response:
            return self._handle_401(response, position, **kwargs)

        return hook

    def _handle_401(
        self, response: requests.Response, position: int | None, **kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401:
            return response
        request = response.request
        used = _bearer(request.headers.get("Authorization"))
        # Free the connection before the retry (as requests' HTTPDigestAuth does).
        _ = response.content
        response.close()
        if used is not None:
            self.cache.invalidate(used)
        token = self.cache.get()
        retry = request.copy()
        if position is not None:
            seek = getattr(retry.body, "seek", None)
            if callable(seek):
                seek(position)
        retry.headers["Authorization"] = f"Bearer {token}"
        # The copy carries our hook; the adapter does not run hooks, so no loop.
        second = response.connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        if second.status_code == 401:
            _ = second.content
            second.close()
            raise AuthenticationError(
                f"API refused a freshly fetched token (401 twice) for "
                f"{retry.method} {_path(retry.url)}",
                code="unauthorized",
            )
        return second


def _bearer(header: str | bytes | None) -> str | None:
    if header is None:
        return None
    text = header.decode() if isinstance(header, bytes) else header
    scheme, _, value = text.partition(" ")
    return value if scheme.lower() == "bearer" and value else None


def _path(url: str | None) -> str:
    return urlsplit(url or "").path or "/"
