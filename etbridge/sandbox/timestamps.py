"""The API's clock format: UTC, one-second precision, ``2026-11-27T20:04:03Z``."""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_ts(epoch: int) -> str:
    """Render whole epoch seconds the way the API does."""
    return datetime.fromtimestamp(epoch, UTC).strftime(_FORMAT)


def parse_ts(text: str) -> int:
    """Parse a timestamp the sandbox itself produced (cursors); ValueError otherwise."""
    return int(datetime.strptime(text, _FORMAT).replace(tzinfo=UTC).timestamp())


def parse_iso8601(text: str) -> float:
    """Parse any ISO 8601 instant a client may send in a filter, as epoch seconds.

    A value without a zone is taken as UTC (the API's zone). Raises ValueError.
    """
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
