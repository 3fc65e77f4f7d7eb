"""Per-application request limit in fixed one-minute windows aligned to the epoch minute."""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateDecision:
    """The limiter's verdict on one request, with what the response headers need."""

    window_start: int
    limit: int
    remaining: int
    limited: bool
    retry_after: int

    def headers(self) -> dict[str, str]:
        """``X-Api-Request-Limit`` / ``X-Api-Request-Remaining``."""
        return {
            "X-Api-Request-Limit": str(self.limit),
            "X-Api-Request-Remaining": str(self.remaining),
        }


class FixedWindowLimiter:
    """Counts every request of an application; past its limit in a window, refuses it.

    ``limit`` applies to every application without one of its own in ``limits``.
    """

    def __init__(self, limit: int, limits: dict[str, int] | None = None) -> None:
        self.limit = limit
        self.limits = dict(limits or {})
        self._windows: dict[str, tuple[int, int]] = {}

    def limit_of(self, application: str) -> int:
        """The requests per minute ``application`` may make."""
        return self.limits.get(application, self.limit)

    def hit(self, application: str, now: float) -> RateDecision:
        """Count one request of ``application`` at ``now`` (refused ones count too)."""
        window_start = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        start, count = self._windows.get(application, (window_start, 0))
        if start != window_start:
            count = 0
        count += 1
        self._windows[application] = (window_start, count)
        retry_after = max(1, math.ceil(window_start + WINDOW_SECONDS - now))
        limit = self.limit_of(application)
        return RateDecision(
            window_start=window_start,
            limit=limit,
            remaining=max(0, limit - count),
            limited=count > limit,
            retry_after=retry_after,
        )

    def reset(self) -> None:
        """Forget every window (the admin reset)."""
        self._windows.clear()
