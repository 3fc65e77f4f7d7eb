"""Times as text: RFC 3339 UTC for everything etbridge shows, whole seconds for API filters."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def rfc3339(dt: datetime) -> str:
    """``2026-11-27T20:04:03Z`` in UTC (naive = UTC); microseconds only if non-zero."""
    # Naive means UTC: the API's timestamps are UTC, and so are ours.
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    # strftime("%Y") does not zero-pad years below 1000 on glibc: format by hand.
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def from_epoch(seconds: float | str | bytes | None) -> str | None:
    """An epoch-seconds value (a number or a Redis reply) as RFC 3339; None if unset or bad.

    ``None``, empty and ``0`` mean "never" (how etbridge's Redis hashes spell unset).
    """
    if seconds is None or seconds in ("", b"", "0", b"0"):
        return None
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    try:
        return rfc3339(datetime.fromtimestamp(value, tz=UTC))
    except (OverflowError, OSError, ValueError):
        return None


def from_epoch_ms(ms: int | float | None) -> str | None:
    """An epoch-milliseconds value as RFC 3339 (``None`` stays ``None``)."""
    return None if ms is None else from_epoch(ms / 1000)


def filter_timestamp(when: datetime) -> str:
    """ISO 8601 UTC with ``Z`` and whole seconds (the API's precision), for filters.

    Truncating (not rounding) keeps a ``gt`` filter inclusive of the boundary second.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("updated_after must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
