"""The fleet's memory of a failed token request, and the backoff it imposes.

One Redis hash per token (``Keyspace.token_failure``): what failed, how often in a
row, and when the fleet may ask again. Inside that backoff every caller gets
the remembered error without a request. The record carries a fingerprint of
the secret, so a corrected secret is tried at once. See docs/token.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from etbridge.errors import (
    AuthenticationError,
    MalformedResponse,
    RateLimited,
    RetriableError,
    ServerError,
    TransportError,
)
from etbridge.jsonapi import MAX_RETRY_AFTER
from etbridge.replies import optional_int

FAILURE_RECORD_TTL_MS = 7 * 86400 * 1000
"""A failure record outlives any backoff; it goes on the next success."""

# The one table of transient token failures: the error class and the code that
# ``etbridge status`` shows for it (the class is stored by name to raise it again).
TRANSIENT_CODES: dict[type[RetriableError], str] = {
    RateLimited: "rate_limited",
    ServerError: "server_error",
    TransportError: "unreachable",
    MalformedResponse: "malformed_response",
}
_BY_NAME = {cls.__name__: cls for cls in TRANSIENT_CODES}

# Remember a failed token request and when the fleet may try again.
# The attempt counter restarts when the kind or the secret changed.
# KEYS[1] failure hash
# ARGV[1] kind ("auth" | "transient")  ARGV[2] code  ARGV[3] description
# ARGV[4] secret_fp  ARGV[5] now_ms (Redis TIME)  ARGV[6] base_ms  ARGV[7] cap_ms
# ARGV[8] min_delay_ms (a Retry-After)  ARGV[9] record ttl_ms
# ARGV[10] error class to raise again (a RetriableError subclass name, or "")
# ARGV[11] ceiling_ms: no delay is longer, whatever the Retry-After said
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
-- The floor (a Retry-After) first, the ceiling last: a huge Retry-After must
-- not stop the fleet's token requests for the record's whole TTL.
delay = math.max(delay, tonumber(ARGV[8]))
delay = math.min(delay, tonumber(ARGV[11]))
local next_at = tonumber(ARGV[5]) + math.floor(delay)
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'code', ARGV[2], 'description', ARGV[3],
           'secret_fp', ARGV[4], 'attempts', attempts, 'failed_at_ms', ARGV[5],
           'next_attempt_at_ms', string.format('%d', next_at), 'class', ARGV[10])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return {attempts, string.format('%d', next_at)}
"""


@dataclass(frozen=True)
class Recorded:
    """What :meth:`FailureMemory.record` stored."""

    code: str
    attempts: int
    next_attempt_at_ms: int


class FailureMemory:
    """The failure record of one token (``key``) for one secret (``secret_fp``)."""

    def __init__(self, redis_client: redis.Redis, key: str, secret_fp: str) -> None:
        self.key = key
        self.secret_fp = secret_fp
        self._redis = redis_client
        self._script = redis_client.register_script(RECORD_FAILURE)

    def clear(self) -> None:
        self._redis.delete(self.key)

    def record(
        self,
        exc: AuthenticationError | RetriableError,
        *,
        now_ms: int,
        base: float,
        cap: float,
        min_delay: float = 0.0,
    ) -> Recorded:
        """Store ``exc`` and its backoff (``base`` doubling to ``cap``, at least ``min_delay``).

        No delay exceeds ``max(cap, MAX_RETRY_AFTER)``, however long ``min_delay``.
        """
        if isinstance(exc, AuthenticationError):
            kind, code, error_class = "auth", exc.code or "unknown", ""
        else:
            kind = "transient"
            code = TRANSIENT_CODES.get(type(exc), "temporarily_unavailable")
            error_class = type(exc).__name__
        # The message embeds the code already; keep the server's words only.
        description = str(exc).removeprefix(f"token endpoint refused the credentials ({code}): ")
        ceiling = max(cap, MAX_RETRY_AFTER)
        attempts, next_ms = self._script(
            keys=[self.key],
            args=[
                kind,
                code,
                description,
                self.secret_fp,
                now_ms,
                int(base * 1000),
                int(cap * 1000),
                int(min(min_delay, ceiling) * 1000),
                FAILURE_RECORD_TTL_MS,
                error_class,
                int(ceiling * 1000),
            ],
        )
        return Recorded(code, int(attempts), int(next_ms))

    def backing_off(self, failure: dict[str, str], now_ms: int) -> bool:
        """Whether ``failure`` (the record as read) still forbids a token request."""
        if not failure or failure.get("secret_fp") != self.secret_fp:
            return False
        return now_ms < (optional_int(failure.get("next_attempt_at_ms")) or 0)

    def raise_if_backing_off(self, failure: dict[str, str], now_ms: int) -> None:
        """Inside a remembered failure's backoff, raise it again without a request."""
        if not self.backing_off(failure, now_ms):
            return
        next_ms = optional_int(failure.get("next_attempt_at_ms")) or now_ms
        wait = max(0.0, (next_ms - now_ms) / 1000)
        code = failure.get("code") or "unknown"
        description = failure.get("description") or ""
        if failure.get("kind") == "auth":
            raise AuthenticationError(
                f"token endpoint refused the credentials ({code}): {description} "
                f"[remembered; next token request in {wait:.0f}s]",
                code=code,
            )
        cls = _BY_NAME.get(failure.get("class", ""), TransportError)
        raise cls(
            f"token endpoint unavailable ({code}): {description} "
            f"[remembered; next token request in {wait:.1f}s]",
            retry_after=wait,
        )
