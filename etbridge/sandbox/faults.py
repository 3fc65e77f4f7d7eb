"""Fault injection for ``/v2/`` calls: server errors, proxy pages, cut bodies, delays, 429s.

Faults draw from their own seeded generator so that turning them on never changes the
mutation engine's sequence.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Knobs that are probabilities per request.
RATE_KNOBS: tuple[str, ...] = (
    "error_500",
    "html_502",
    "truncated",
    "slow",
    "storm_429",
    "bookings_error_500",
    "contacts_error_500",
)

#: What nginx answers when the upstream is down: HTML, not JSON:API.
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass
class FaultSettings:
    """Current fault rates (0..1) and parameters; all off by default."""

    error_500: float = 0.0
    html_502: float = 0.0
    truncated: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 1.0
    storm_429: float = 0.0
    storm_retry_after: int = 1
    # 500s on one collection only (``/v2/bookings...`` or ``/v2/contacts...``).
    bookings_error_500: float = 0.0
    contacts_error_500: float = 0.0
    mutate_between_pages: int = 0
    # 1: the bookings endpoint rejects filter[updated_at] with 400, as an API
    # without the (inferred) incremental filter would.
    no_updated_filter: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


class Faults:
    """The fault settings plus the queue of forced 429s."""

    def __init__(self, seed: int) -> None:
        self.settings = FaultSettings()
        # A string seed is hashed deterministically (unlike hash() of str).
        self._rng = random.Random(f"faults-{seed}")
        self.forced_left = 0
        self.forced_retry_after = 1

    def update(self, changes: dict[str, Any]) -> FaultSettings:
        """Apply the given knobs (others unchanged); raises ValueError on a bad value."""
        known = {f.name for f in fields(FaultSettings)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault knobs: {', '.join(unknown)}")
        validated: dict[str, Any] = {}
        for name, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
            if name in RATE_KNOBS and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability: 0..1")
            if name == "slow_seconds" and not 0.0 <= value <= 600.0:
                raise ValueError("slow_seconds must be within 0..600")
            if name in ("mutate_between_pages", "storm_retry_after", "no_updated_filter"):
                if value != int(value) or value < 0:
                    raise ValueError(f"{name} must be a whole number >= 0")
                validated[name] = int(value)
                continue
            validated[name] = float(value) if name in RATE_KNOBS else value
        for name, value in validated.items():
            setattr(self.settings, name, value)
        return self.settings

    def roll(self, knob: str) -> bool:
        """Whether the fault ``knob`` strikes this request."""
        rate: float = getattr(self.settings, knob)
        if rate <= 0.0:
            return False
        return rate >= 1.0 or self._rng.random() < rate

    def force_429(self, count: int, retry_after: int) -> None:
        """The next ``count`` API calls get 429 with ``Retry-After: retry_after``."""
        self.forced_left = count
        self.forced_retry_after = retry_after

    def take_forced(self) -> int | None:
        """Retry-After of a pending forced 429, consuming it, or None."""
        if self.forced_left <= 0:
            return None
        self.forced_left -= 1
        return self.forced_retry_after

    def reset(self) -> None:
        """All faults off, no forced 429s pending."""
        self.settings = FaultSettings()
        self.forced_left = 0


def truncate(body: bytes) -> bytes:
    """Cut a body in the middle (at a character boundary, so the JSON is what breaks)."""
    cut = len(body) // 2
    while 0 < cut < len(body) and (body[cut] & 0xC0) == 0x80:
        cut -= 1
    return body[:cut]
