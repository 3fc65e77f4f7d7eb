"""The watermark rules, pure: where an incremental listing starts, and how the mark moves.

The watermark is the newest ``updated_at`` a complete scan saw (the API's
clock). An incremental poll lists from ``watermark - lookback``; the mark
moves only after a complete scan, never backwards, and never past our own
clock (a record stamped in the future must not hide every later change).
The poller reads and stores it (``watermark`` in the org's meta hash).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from etbridge.events import parse_timestamp

__all__ = ["advance", "newest", "page_max", "since"]


def since(watermark: datetime | None, lookback: float) -> datetime | None:
    """Where an incremental listing starts: the watermark less the lookback (None: list all)."""
    return None if watermark is None else watermark - timedelta(seconds=lookback)


def page_max(records: Iterable[Any]) -> datetime | None:
    """The newest parseable ``updated_at`` of a page (None if none).

    Records canonical or as served: an object without an ``attributes`` object
    is skipped (``null`` has none; a malformed one is refused by the page commit).
    """
    stamps = (
        parse_timestamp(attrs.get("updated_at"))
        for r in records
        if isinstance(r, Mapping) and isinstance(attrs := r.get("attributes"), Mapping)
    )
    return max((ts for ts in stamps if ts is not None), default=None)


def newest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two marks, either of which may be unset."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def advance(old: datetime | None, scan_max: datetime | None, now: datetime) -> datetime | None:
    """The watermark to store after a complete scan, or None to leave the stored one.

    ``scan_max`` is the newest ``updated_at`` the scan saw; it is capped at
    ``now`` (where the API's clock runs ahead, the lookback overlap grows a
    little: re-reads, never lost events). A stored mark from the future (a
    clock that jumped back) is replaced, by ``now`` if the scan saw nothing.
    """
    if scan_max is not None:
        scan_max = min(scan_max, now)
    new: datetime | None = None
    if old is not None and old > now:
        old = None
        new = scan_max or now
    if scan_max is not None and (old is None or scan_max > old):
        new = scan_max
    return new
