"""The records the sandbox serves: bookings and contacts, per-org collections, orgs.

A :class:`Record` caches its JSON; a :class:`Collection` keeps the two keyset indexes
(``sort=id`` and ``sort=updated_at``) that pagination walks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etbridge.sandbox.jsonapi import dumps

#: The collections every org has (``/v2/<name>``); contacts are a shape inferred from bookings.
RESOURCES: tuple[str, ...] = ("bookings", "contacts")

#: Relationship name -> JSON:API type of the related resource.
RELATED_TYPES: dict[str, str] = {"account": "accounts", "contact": "contacts", "owner": "users"}


@dataclass(eq=False)
class Record:
    """One booking or contact; ``encoded()`` caches its JSON so list pages are cheap."""

    id: int
    org_id: str
    updated_ts: int
    attributes: dict[str, Any]
    relationships: dict[str, str | None]
    type: str = "bookings"
    _encoded: bytes | None = field(default=None, repr=False)

    def resource(self) -> dict[str, Any]:
        """The JSON:API resource object, as the API renders it (a fresh copy)."""
        relationships: dict[str, Any] = {}
        for name, related_id in self.relationships.items():
            data = None if related_id is None else {"type": RELATED_TYPES[name], "id": related_id}
            relationships[name] = {"data": data}
        return {
            "type": self.type,
            "id": str(self.id),
            "attributes": dict(self.attributes),
            "relationships": relationships,
        }

    def encoded(self) -> bytes:
        """The resource as compact JSON bytes, cached until the record changes."""
        if self._encoded is None:
            self._encoded = dumps(self.resource())
        return self._encoded

    def invalidate(self) -> None:
        """Forget the cached JSON after a change."""
        self._encoded = None


#: The name the bookings code has always used.
Booking = Record


@dataclass(eq=False)
class Collection:
    """One collection of an org (bookings or contacts) with its keyset indexes."""

    records: dict[int, Record] = field(default_factory=dict)
    #: Record ids ascending: the keyset index for ``sort=id``.
    ids: list[int] = field(default_factory=list)
    #: ``(updated_ts, id)`` ascending: the keyset index for ``sort=updated_at``.
    by_updated: list[tuple[int, int]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Org:
    """An organization (one hotel of the chain) with its collections.

    ``contacts`` is the table bookings' ``contact`` relationships point at (for
    ``include=``); the ``/v2/contacts`` collection is ``collections["contacts"]``.
    """

    id: str
    attributes: dict[str, str]
    accounts: dict[str, dict[str, Any]]
    contacts: dict[str, dict[str, Any]]
    users: dict[str, dict[str, Any]]
    stage_ids: list[int]
    referral_source_ids: list[int]
    collections: dict[str, Collection] = field(
        default_factory=lambda: {name: Collection() for name in RESOURCES}
    )

    @property
    def bookings(self) -> dict[int, Record]:
        """Live bookings by id."""
        return self.collections["bookings"].records

    @property
    def ids(self) -> list[int]:
        """Booking ids ascending."""
        return self.collections["bookings"].ids

    @property
    def by_updated(self) -> list[tuple[int, int]]:
        """Bookings' ``(updated_ts, id)`` ascending."""
        return self.collections["bookings"].by_updated

    @property
    def deleted(self) -> list[str]:
        """Ids of deleted bookings."""
        return self.collections["bookings"].deleted

    def resource(self) -> dict[str, Any]:
        """The organization as ``GET /v2/organizations`` renders it."""
        attributes: dict[str, Any] = {"name": self.attributes["name"], "api_org_id": self.id}
        attributes["currency"] = self.attributes["currency"]
        attributes["time_zone"] = self.attributes["time_zone"]
        return {"type": "organizations", "id": self.id, "attributes": attributes}

    def related_resource(self, relationship: str, related_id: str) -> dict[str, Any] | None:
        """The resource a booking relationship points at, for ``include=``."""
        table = {"account": self.accounts, "contact": self.contacts, "owner": self.users}
        attributes = table[relationship].get(related_id)
        if attributes is None:
            return None
        return {"type": RELATED_TYPES[relationship], "id": related_id, "attributes": attributes}
