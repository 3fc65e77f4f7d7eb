"""Per-org glitches: the API lying about an org rather than failing (``/_admin/glitches``).

- ``empty_listings``: ``GET /v2/bookings`` answers ``200`` with no records;
- ``drop_fraction``: listings leave out that share of the org's bookings (the same
  bookings every time: chosen by a hash of org and id, not by chance);
- ``forbidden``: every ``/v2/bookings`` call with this ``X-API-ORG`` answers ``403``;
- ``unlisted``: ``/v2/organizations`` no longer lists the org.

``GET /v2/bookings/{id}`` tells the truth under the first two, which is what lets
a client confirm a deletion the listing suggests.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any

_FLAGS = ("empty_listings", "forbidden", "unlisted")


@dataclass
class Glitch:
    """What is wrong with one org's answers now."""

    empty_listings: bool = False
    drop_fraction: float = 0.0
    forbidden: bool = False
    unlisted: bool = False

    @property
    def active(self) -> bool:
        return bool(self.empty_listings or self.drop_fraction or self.forbidden or self.unlisted)

    def drops(self, org_id: str, booking_id: int) -> bool:
        """Whether a listing leaves this booking out (stable while the fraction is)."""
        if self.empty_listings:
            return True
        if self.drop_fraction <= 0.0:
            return False
        return zlib.crc32(f"{org_id}:{booking_id}".encode()) / 2**32 < self.drop_fraction


class Glitches:
    """The glitches of every org, keyed by org id (an org without one is absent)."""

    def __init__(self) -> None:
        self.by_org: dict[str, Glitch] = {}

    def get(self, org_id: str) -> Glitch | None:
        return self.by_org.get(org_id)

    def update(self, org_id: str, changes: dict[str, Any]) -> Glitch:
        """Apply the given knobs of one org (others unchanged); ValueError on a bad value."""
        unknown = sorted(set(changes) - {*_FLAGS, "drop_fraction"})
        if unknown:
            raise ValueError(f"unknown glitch knobs: {', '.join(unknown)}")
        glitch = self.by_org.get(org_id) or Glitch()
        for name, value in changes.items():
            if name in _FLAGS:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
                setattr(glitch, name, value)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("drop_fraction must be a number")
            if not 0.0 <= value <= 1.0:
                raise ValueError("drop_fraction is a share of the bookings: 0..1")
            glitch.drop_fraction = float(value)
        if glitch.active:
            self.by_org[org_id] = glitch
        else:
            self.by_org.pop(org_id, None)
        return glitch

    def as_dict(self) -> dict[str, Any]:
        return {org_id: asdict(g) for org_id, g in sorted(self.by_org.items())}

    def reset(self) -> None:
        self.by_org.clear()
