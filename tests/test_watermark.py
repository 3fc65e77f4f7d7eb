"""The watermark rules (etbridge/watermark.py), pure: no Redis, no clock but the one given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from etbridge import watermark

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def rec(updated_at: Any) -> dict[str, Any]:
    return {"type": "bookings", "id": "1", "attributes": {"updated_at": updated_at}}


def test_since_is_the_watermark_less_the_lookback() -> None:
    assert watermark.since(None, 60) is None
    assert watermark.since(NOW, 90) == NOW - timedelta(seconds=90)


def test_page_max_skips_missing_and_unparseable_stamps() -> None:
    page = [
        rec("2026-11-30T10:00:00Z"),
        rec(None),
        rec("garbage"),
        rec("2026-11-30T11:00:00+01:00"),
    ]
    assert watermark.page_max(page) == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert watermark.page_max([rec(None)]) is None
    assert watermark.page_max([]) is None


def test_newest_of_two_marks() -> None:
    assert watermark.newest(None, None) is None
    assert watermark.newest(NOW, None) == NOW and watermark.newest(None, NOW) == NOW
    assert watermark.newest(NOW - HOUR, NOW) == NOW == watermark.newest(NOW, NOW - HOUR)


def test_the_mark_moves_forward_only() -> None:
    assert watermark.advance(None, NOW - HOUR, NOW) == NOW - HOUR
    assert watermark.advance(NOW - 2 * HOUR, NOW - HOUR, NOW) == NOW - HOUR
    assert watermark.advance(NOW - HOUR, NOW - 2 * HOUR, NOW) is None  # older: leave it
    assert watermark.advance(NOW - HOUR, NOW - HOUR, NOW) is None
    assert watermark.advance(NOW - HOUR, None, NOW) is None  # an empty scan
    assert watermark.advance(None, None, NOW) is None


def test_a_record_from_the_future_moves_the_mark_no_further_than_now() -> None:
    assert watermark.advance(NOW - HOUR, NOW + 24 * HOUR, NOW) == NOW
    assert watermark.advance(None, NOW + HOUR, NOW) == NOW


def test_a_mark_from_the_future_is_replaced() -> None:
    # A clock that jumped back: the stored mark would hide every change until then.
    assert watermark.advance(NOW + HOUR, NOW - HOUR, NOW) == NOW - HOUR
    assert watermark.advance(NOW + HOUR, None, NOW) == NOW
    assert watermark.advance(NOW + HOUR, NOW + 2 * HOUR, NOW) == NOW
