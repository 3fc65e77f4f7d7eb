"""Delays between in-process retries: one exponential formula, two kinds of jitter.

Used by the API client (full jitter), the token cache (its in-call retries and
the fleet's failure memory) and anything else that retries in a loop. The
token failure record's Lua script computes the same :func:`exponential` in
Redis (see docs/token.md).
"""

from __future__ import annotations

import random

MAX_DOUBLINGS = 30
"""Doublings past this change nothing but risk overflow (2**30 · base ≫ any cap)."""


def exponential(attempt: int, base: float, cap: float) -> float:
    """Delay after the ``attempt``-th consecutive failure: base, 2·base, 4·base … ≤ cap."""
    return float(min(cap, base * 2 ** min(max(attempt, 1) - 1, MAX_DOUBLINGS)))


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """Uniform in ``[0, exponential(attempt)]``: spreads a fleet's retries over the interval."""
    return random.uniform(0.0, exponential(attempt, base, cap))  # noqa: S311  (jitter, not a secret)


def jitter(delay: float, low: float, high: float) -> float:
    """``delay`` scaled by a random factor in ``[low, high]`` (so processes do not align)."""
    return delay * random.uniform(low, high)  # noqa: S311  (jitter, not a secret)


def max_attempts_in(span: float, base: float, cap: float) -> int:
    """Most attempts :func:`exponential` allows within ``span`` seconds (first one included)."""
    count, elapsed = 1, 0.0
    while True:
        elapsed += exponential(count, base, cap)
        if elapsed > span:
            return count
        count += 1
