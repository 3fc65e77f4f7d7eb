"""Cursor pagination: opaque cursors over a keyset of (sort key, id).

Keysets keep pages stable while records change: a cursor names a position in the
sort order, not an offset, so inserts and deletes elsewhere shift nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from etbridge.sandbox.timestamps import format_ts, parse_ts

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100


class _Comparable(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Comparable)


class InvalidCursor(ValueError):
    """A cursor the sandbox did not issue for this sort."""


@dataclass(frozen=True)
class Sort:
    """A sort order: ``field`` is ``id`` or ``updated_at``."""

    field: str
    descending: bool


#: The ``sort`` values the bookings collection accepts.
BOOKING_SORTS: dict[str, Sort] = {
    "id": Sort("id", False),
    "-id": Sort("id", True),
    "updated_at": Sort("updated_at", False),
    "-updated_at": Sort("updated_at", True),
}


def encode_cursor(payload: dict[str, str]) -> str:
    """Opaque cursor: URL-safe base64 of compact JSON, without padding."""
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Inverse of :func:`encode_cursor`; raises :class:`InvalidCursor`."""
    text = cursor.strip().replace("+", "-").replace("/", "_")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    if not isinstance(payload, dict):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return payload


def id_cursor(record_id: int) -> str:
    """Cursor of a record in an id-sorted listing."""
    return encode_cursor({"id": str(record_id)})


def id_key(cursor: str) -> int:
    """Keyset position of an id cursor."""
    payload = decode_cursor(cursor)
    try:
        return int(payload["id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc


def updated_cursor(key: tuple[int, int]) -> str:
    """Cursor of a record in an updated_at-sorted listing."""
    return encode_cursor({"updated_at": format_ts(key[0]), "id": str(key[1])})


def updated_key(cursor: str) -> tuple[int, int]:
    """Keyset position of an updated_at cursor (an id cursor does not fit this sort)."""
    payload = decode_cursor(cursor)
    try:
        return parse_ts(str(payload["updated_at"])), int(payload["id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidCursor(f"cursor {cursor!r} does not belong to this sort") from exc


@dataclass(frozen=True)
class Page(Generic[K]):
    """The keys of one page, in the requested order, and whether more lie beyond it."""

    keys: list[K]
    has_more: bool


def select(
    keys: Sequence[K],
    *,
    descending: bool,
    after: K | None,
    before: K | None,
    size: int,
    accept: Callable[[K], bool] | None = None,
    floor: K | None = None,
) -> Page[K]:
    """Pick one page from ``keys`` (sorted ascending) in the requested direction.

    ``after`` / ``before`` are exclusive positions in the *requested* order. With only
    ``before``, the page is the ``size`` records just before it (walking backwards) and
    ``has_more`` tells whether more lie further back; otherwise the page starts right
    after ``after`` (or at the start) and ``has_more`` tells whether more follow.
    ``accept`` filters records (None keeps all, and is fast); ``floor`` is an optional
    lowest key worth looking at (a filter's bound on the sort key), which only saves work.
    """
    if descending:
        low = bisect_right(keys, before) if before is not None else 0
        high = bisect_left(keys, after) if after is not None else len(keys)
    else:
        low = bisect_right(keys, after) if after is not None else 0
        high = bisect_left(keys, before) if before is not None else len(keys)
    if floor is not None:
        low = max(low, bisect_left(keys, floor))
    in_order = range(high - 1, low - 1, -1) if descending else range(low, high)
    backwards = before is not None and after is None
    if accept is None:
        # Without a filter the page is a plain slice of the index.
        chosen = in_order[-size:] if backwards else in_order[:size]
        return Page([keys[index] for index in chosen], len(in_order) > size)
    walk = reversed(in_order) if backwards else in_order
    picked: list[K] = []
    has_more = False
    for index in walk:
        key = keys[index]
        if not accept(key):
            continue
        if len(picked) == size:
            has_more = True
            break
        picked.append(key)
    if backwards:
        picked.reverse()
    return Page(picked, has_more)
