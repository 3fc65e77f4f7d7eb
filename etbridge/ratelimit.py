"""The fleet-wide request budget: one shared allowance of API calls per application.

Every API call first takes a slot from one budget in Redis, decided by one Lua
script on Redis's clock, so all processes on all hosts draw from the same
allowance (the API counts per application, in fixed one-minute windows). A
sliding-window log enforces the limit, GCRA paces the grants inside it, a 429
pauses the fleet for its ``Retry-After``, and a low ``X-Api-Request-Remaining``
charges the budget with the requests the API counted but we did not grant.
The protocol, its keys and failure cases: docs/ratelimit.md.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from typing import Any

import redis

from etbridge import keys, redisconn
from etbridge.errors import RateLimited
from etbridge.jsonapi import MAX_RETRY_AFTER
from etbridge.settings import Settings
from etbridge.timefmt import from_epoch

log = logging.getLogger("etbridge.ratelimit")

WINDOW = 60.0
"""Seconds of the API's rate-limit window."""

DEFAULT_MARGIN = 1.0
"""Seconds added to the window and to every pause (see docs/ratelimit.md)."""

# Take one slot from the budget, or say how long until one may be free.
#
# KEYS[1]  budget log: sorted set, member = grant id, score = grant time (µs, Redis clock)
# KEYS[2]  pause key: exists while the fleet is paused (PX expiry = the pause's end)
# KEYS[3]  pace key: GCRA's theoretical arrival time of the next grant (µs)
# ARGV[1]  limit: grants allowed per window
# ARGV[2]  window in µs (the API's window plus the safety margin)
# ARGV[3]  member: a unique id for this grant
# ARGV[4]  emission interval T in µs (GCRA)
# ARGV[5]  burst tolerance tau in µs (GCRA: (burst - 1) * T)
#
# Returns 0 when the slot was granted, else the µs to wait before asking again
# (nothing is written then). Uses Redis's clock, so hosts with skewed clocks agree.
ACQUIRE_LUA = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then
  return pause * 1000
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local interval = tonumber(ARGV[4])
local tau = tonumber(ARGV[5])
local wait = 0
-- The limit: fewer than `limit` grants in the last window.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used >= limit then
  -- A slot frees when the grant that keeps the count at the limit leaves the window.
  local oldest = redis.call('ZRANGE', KEYS[1], used - limit, used - limit, 'WITHSCORES')
  wait = tonumber(oldest[2]) + window - now
end
-- The pace: GCRA's theoretical arrival time may run at most tau ahead of now.
local tat = now
local stored = redis.call('GET', KEYS[3])
if stored then
  tat = math.max(tonumber(stored), now)
end
if tat - now > tau then
  wait = math.max(wait, tat - tau - now)
end
if wait > 0 then
  return math.max(wait, 1)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
tat = tat + interval
redis.call('SET', KEYS[3], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return 0
"""

# Pause the whole fleet, extending (never shortening) a pause already set.
#
# KEYS[1]  pause key
# ARGV[1]  pause length in ms
#
# Returns the pause's remaining ms after the call.
PAUSE_LUA = """
local want = tonumber(ARGV[1])
local current = redis.call('PTTL', KEYS[1])
if current < want then
  local t = redis.call('TIME')
  local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + want
  redis.call('SET', KEYS[1], until_ms, 'PX', want)
  return want
end
return current
"""

# Charge the budget with requests the API counted but the budget did not grant.
#
# KEYS[1]  budget log (as in ACQUIRE_LUA)
# ARGV[1]  limit
# ARGV[2]  window in µs
# ARGV[3]  target: the fewest grants the log must hold now (limit - API remaining)
# ARGV[4]  prefix for the phantom members' ids
# ARGV[5]  extra: phantom grants to add regardless of the target (requests made
#          outside the budget, e.g. an auth retry)
#
# Returns the number of phantom grants added.
CHARGE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
-- Never charge past the limit for the target: a full log already stops the fleet.
local target = math.min(tonumber(ARGV[3]), tonumber(ARGV[1]))
local add = math.max(target - used, 0) + tonumber(ARGV[5])
for i = 1, add do
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i)
end
if add > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
end
return add
"""


# The longest fleet-wide pause one answer can cause (seconds).
MAX_PAUSE = MAX_RETRY_AFTER


class RequestBudget:
    """The fleet's shared allowance of API requests (docs/ratelimit.md).

    ``app_id`` names the application; use :meth:`for_settings`, which derives
    it from the client id with :func:`etbridge.keys.digest` so the raw id never
    appears in Redis. Every process that talks to the API with the same client
    id must use the same Redis and the same ``limit``.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        ks: keys.Keyspace,
        app_id: str,
        limit: int,
        *,
        window: float = WINDOW,
        margin: float = DEFAULT_MARGIN,
        burst: int | None = None,
        poll_cap: float = 1.0,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0 or margin < 0:
            raise ValueError("window must be positive and margin non-negative")
        if burst is None:
            burst = default_burst(limit)
        if not 1 <= burst <= limit:
            raise ValueError("burst must be within 1..limit")
        self.redis = redis_client
        self.app_id = app_id
        self.limit = limit
        self.window = window
        self.margin = margin
        self.burst = burst
        # The longest single sleep while waiting: slots can free earlier than
        # computed (a reset, a process with a larger limit during a rolling
        # deploy), so a waiter looks again at least this often.
        self.poll_cap = poll_cap
        self.key = ks.budget(app_id)
        self.pause_key = ks.budget_pause(app_id)
        # GCRA's next theoretical arrival time (µs); shares the budget's hash tag.
        self.pace_key = ks.budget_pace(app_id)
        self._window_us = round((window + margin) * 1_000_000)
        self._interval_us = max(1, self._window_us // limit)
        self._tau_us = (burst - 1) * self._interval_us
        self._acquire = redis_client.register_script(ACQUIRE_LUA)
        self._pause = redis_client.register_script(PAUSE_LUA)
        self._charge = redis_client.register_script(CHARGE_LUA)

    @classmethod
    def for_settings(cls, settings: Settings, redis_client: redis.Redis) -> RequestBudget:
        """The budget of the application ``settings.client_id`` (``ETBRIDGE_RATE_LIMIT``)."""
        return cls(
            redis_client, settings.keyspace, keys.digest(settings.client_id), settings.rate_limit
        )

    def __repr__(self) -> str:
        return f"RequestBudget(app_id={self.app_id!r}, limit={self.limit})"

    @property
    def low_water(self) -> int:
        """The ``X-Api-Request-Remaining`` at or below which :meth:`observe` acts."""
        return low_water_mark(self.limit)

    # -- taking slots ----------------------------------------------------------

    def try_acquire(self) -> float:
        """Take one slot now: ``0.0`` if granted, else seconds until one may be free.

        Nothing is taken when the answer is positive.
        """
        member = uuid.uuid4().hex
        wait_us = int(
            self._acquire(
                keys=[self.key, self.pause_key, self.pace_key],
                args=[self.limit, self._window_us, member, self._interval_us, self._tau_us],
            )
        )
        return wait_us / 1_000_000 if wait_us > 0 else 0.0

    def acquire(self, max_wait: float) -> None:
        """Take one slot, sleeping up to ``max_wait`` seconds for it.

        Raises :class:`RateLimited` with ``retry_after`` (seconds until a slot
        may be free) when none can be had within ``max_wait``, so a Celery task
        can ``retry(countdown=...)`` instead of holding a worker slot.
        """
        deadline = time.monotonic() + max(0.0, max_wait)
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return
            left = deadline - time.monotonic()
            if wait > left:
                raise RateLimited(
                    f"request budget of app {self.app_id} is spent: next slot in {wait:.1f}s",
                    retry_after=wait,
                )
            # A little jitter spreads the processes that wait for the same
            # slot, so they do not all ask Redis at the same microsecond.
            time.sleep(min(wait, self.poll_cap) + random.uniform(0.0, 0.005))  # noqa: S311

    # -- signals from the API ----------------------------------------------------

    def pause(self, seconds: float) -> float:
        """Stop the whole fleet for ``seconds`` (plus the margin), e.g. a 429's Retry-After.

        Only extends a pause already in force. Returns the seconds the fleet is
        now paused for.
        """
        if not math.isfinite(seconds) or seconds <= 0:
            return 0.0
        # A broken Retry-After of hours must not stop the fleet for hours.
        seconds = min(seconds, MAX_PAUSE)
        ms = math.ceil((seconds + self.margin) * 1000)
        left = int(self._pause(keys=[self.pause_key], args=[ms]))
        log.warning("budget pause app=%s seconds=%.1f", self.app_id, left / 1000)
        return left / 1000

    def observe(self, remaining: int | None, limit: int | None = None) -> int:
        """Feed ``X-Api-Request-Remaining`` / ``-Limit`` of a response to the budget.

        At or below the low-water mark, the budget is charged so that its free
        slots are no more than ``remaining`` (and the API's own limit, if lower
        than ours, is respected). Returns the phantom grants added; does no I/O
        above the low-water mark.
        """
        if remaining is None or remaining < 0:
            return 0
        effective = min(self.limit, limit) if limit and limit > 0 else self.limit
        if remaining > low_water_mark(effective):
            return 0
        # Our free slots must not exceed what the API says remain.
        target = self.limit - remaining
        added = int(
            self._charge(
                keys=[self.key],
                args=[self.limit, self._window_us, target, f"x:{uuid.uuid4().hex}", 0],
            )
        )
        if added:
            log.warning(
                "budget low-water app=%s remaining=%d charged=%d", self.app_id, remaining, added
            )
        return added

    def record(self, count: int) -> None:
        """Count ``count`` requests that were sent without a slot (an auth retry, a redirect).

        They are charged even past the limit: they have happened.
        """
        if count <= 0:
            return
        self._charge(
            keys=[self.key],
            args=[self.limit, self._window_us, 0, f"r:{uuid.uuid4().hex}", count],
        )

    # -- reading -------------------------------------------------------------------

    def status(self, ahead: float = 0.0) -> dict[str, Any]:
        """``{"limit", "used", "paused_until", "paused_for"}``: grants and any pause.

        ``used`` counts the grants in the window the limiter enforces (60 s
        plus the margin), so a planner that subtracts it from the limit never
        plans ahead of the budget. Only reads Redis (for ``etbridge status``);
        ``paused_until`` is an ISO 8601 UTC time or ``None``, ``paused_for``
        the seconds left of it. ``freeing`` counts the grants that leave the
        window within the next ``ahead`` seconds (the planner sends that far ahead).
        """
        pipe = self.redis.pipeline(transaction=False)
        clock = redisconn.queue_time(self.redis, pipe)
        pipe.pttl(self.pause_key)
        replies = pipe.execute()
        (seconds, micros) = clock or replies.pop(0)
        (pttl,) = replies
        now_us = int(seconds) * 1_000_000 + int(micros)
        since = now_us - self._window_us
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.key, f"({since}", "+inf")
        pipe.zcount(self.key, f"({since}", since + int(ahead * 1_000_000))
        used, freeing = (int(n) for n in pipe.execute())
        pttl = int(pttl)
        paused_until = from_epoch(now_us / 1_000_000 + pttl / 1000) if pttl > 0 else None
        return {
            "limit": self.limit,
            "used": used,
            "freeing": freeing,
            "paused_until": paused_until,
            "paused_for": max(0, pttl) / 1000,
        }

    def reset(self) -> None:
        """Forget every grant and pause (tests and ``etbridge`` maintenance only)."""
        self.redis.delete(self.key, self.pause_key, self.pace_key)


def default_burst(limit: int) -> int:
    """Grants that may go out back to back: 2 % of the limit, at least 1.

    Small, so that a saturated fleet's requests stay spread over the window
    (docs/ratelimit.md); large enough that a short listing of a few
    pages does not wait.
    """
    return max(1, math.ceil(limit / 50))


def low_water_mark(limit: int) -> int:
    """Remaining requests at which the fleet starts to hold back: 5 % of the limit, at least 2."""
    return max(2, math.ceil(limit * 0.05))
