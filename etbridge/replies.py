"""Redis replies as Python values (etbridge's clients do not decode responses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def optional_text(value: bytes | str | None) -> str | None:
    """A Redis reply as text, ``None`` (a missing field) kept."""
    return None if value is None else text(value)


def text_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """An HGETALL reply as a str -> str dict."""
    return {text(k): text(v) for k, v in raw.items()}


def optional_int(value: bytes | str | None) -> int | None:
    """A numeric Redis reply (``"12"``, ``"12.0"``) as an int; ``None`` if missing or bad."""
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None
