"""Times as text, and Redis replies as values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from etbridge import replies, timefmt


def test_rfc3339_is_utc_with_z_and_microseconds_only_when_set() -> None:
    assert timefmt.rfc3339(datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)) == "2026-11-27T20:04:03Z"
    cet = timezone(timedelta(hours=1))
    assert timefmt.rfc3339(datetime(2026, 11, 27, 21, 4, 3, 120, tzinfo=cet)) == (
        "2026-11-27T20:04:03.000120Z"
    )
    assert timefmt.rfc3339(datetime(999, 1, 2, 3, 4, 5)) == "0999-01-02T03:04:05Z"  # naive = UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1764273843, "2025-11-27T20:04:03Z"),
        ("1764273843.5", "2025-11-27T20:04:03.500000Z"),
        (b"1764273843", "2025-11-27T20:04:03Z"),
        (None, None),
        ("", None),
        ("0", None),
        ("soon", None),
        ("nan", None),
        (1e300, None),
    ],
)
def test_from_epoch(value: object, expected: str | None) -> None:
    assert timefmt.from_epoch(value) == expected  # type: ignore[arg-type]


def test_from_epoch_ms() -> None:
    assert timefmt.from_epoch_ms(1764273843250) == "2025-11-27T20:04:03.250000Z"
    assert timefmt.from_epoch_ms(None) is None


def test_filter_timestamp_truncates_to_whole_seconds_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    when = datetime(2026, 11, 27, 22, 4, 3, 999_999, tzinfo=cet)
    assert timefmt.filter_timestamp(when) == "2026-11-27T21:04:03Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        timefmt.filter_timestamp(datetime(2026, 1, 1))


def test_replies() -> None:
    assert replies.text(b"caf\xc3\xa9") == "café" and replies.text("x") == "x"
    assert replies.optional_text(None) is None and replies.optional_text(b"a") == "a"
    assert replies.text_hash({b"k": b"v", "s": "t"}) == {"k": "v", "s": "t"}
    assert replies.optional_int(b"12") == 12 and replies.optional_int("12.7") == 12
    assert replies.optional_int(None) is None and replies.optional_int(b"x") is None
