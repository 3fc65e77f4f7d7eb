"""In-memory organizations, their bookings and contacts, and the seeded mutation engine.

All randomness comes from one ``random.Random(seed)``, so the same seed and the same
sequence of calls give the same data and the same mutations. Everything runs on the
server's event loop thread, so no locking is needed.

Over 500 lines on purpose: the store and its mutation engine are one object
because they draw from that one generator in one order (the same seed must give
the same data and mutations); split, they would hand the generator back and forth.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from etbridge.sandbox import contacts, fakedata
from etbridge.sandbox.records import (
    RESOURCES,
    Booking,
    Org,
    Record,
)
from etbridge.sandbox.timestamps import format_ts

MUTATION_KINDS: tuple[str, ...] = ("create", "update", "delete", "touch")
_KIND_WEIGHTS: dict[str, int] = {"create": 25, "update": 45, "delete": 10, "touch": 20}

#: Booking attributes the generator produces, in the order the API renders them.
CORE_ATTRIBUTES: tuple[str, ...] = (
    "name",
    "status",
    "start_date",
    "end_date",
    "start_time",
    "end_time",
    "guest_count",
    "total_amount",
    "currency",
    "notes",
    "stage_id",
    "referral_source_id",
    "created_at",
    "updated_at",
)
#: Sorting, filtering and the change log depend on these, so the schema knob keeps them.
PROTECTED_ATTRIBUTES: frozenset[str] = frozenset({"created_at", "updated_at"})

#: Attribute groups an update edits together (a date range moves as one).
_UPDATE_GROUPS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "status": ("status",),
    "dates": ("start_date", "end_date"),
    "times": ("start_time", "end_time"),
    "guest_count": ("guest_count", "total_amount"),
    "total_amount": ("total_amount",),
    "notes": ("notes",),
    "stage_id": ("stage_id",),
    "referral_source_id": ("referral_source_id",),
}

_T = TypeVar("_T")

_FIRST_ORG_ID = 1001
_FIRST_BOOKING_ID = 100001
_FIRST_CONTACT_ID = 700001
#: Initial data is spread over this many seconds before start-up.
_HISTORY_SECONDS = 21 * 86400


class MutationError(ValueError):
    """A requested mutation cannot be applied (unknown org, nothing to update...)."""


class SchemaError(ValueError):
    """A schema change names an attribute that cannot be added or removed."""


@dataclass(frozen=True)
class _Draft:
    """A booking generated but not yet given its id (ids follow creation time)."""

    created_ts: int
    order: int
    org: Org
    updated_ts: int
    attributes: dict[str, Any]
    relationships: dict[str, str | None]


class Store:
    """The sandbox's data: organizations, bookings, the mutation engine and its log."""

    def __init__(
        self,
        *,
        orgs: int,
        bookings: int,
        seed: int,
        contacts: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rng = random.Random(seed)
        # Contacts are seeded from their own generator, so bookings stay what a seed gave.
        self._contact_rng = random.Random(f"contacts-{seed}")
        self.clock = clock
        #: Initial timestamps lie before this instant (exposed by the truth call).
        self.generated_at = int(clock())
        self.orgs: dict[str, Org] = {}
        self.log: list[dict[str, Any]] = []
        self._next_org = _FIRST_ORG_ID
        self._next_id = {"bookings": _FIRST_BOOKING_ID, "contacts": _FIRST_CONTACT_ID}
        self._next_related = 1
        self._orgs_created = 0
        self._extra: dict[str, Any] = {}
        self._removed: set[str] = set()
        new_orgs = [self._new_org() for _ in range(orgs)]
        self._populate(new_orgs, bookings, self.generated_at)
        self._seed_contacts(new_orgs, contacts, self.generated_at)

    # ----------------------------------------------------------------- reading

    def org(self, org_id: str) -> Org | None:
        """The organization with that API org id, if it exists."""
        return self.orgs.get(org_id)

    def truth(self, org_id: str | None = None) -> dict[str, Any]:
        """Every live booking and contact as the API renders it, plus deleted ids, per org."""
        if org_id is not None and org_id not in self.orgs:
            raise MutationError(f"unknown org {org_id}")
        selected = [self.orgs[org_id]] if org_id is not None else list(self.orgs.values())
        return {
            "generated_at": self.generated_at,
            "orgs": {
                org.id: {
                    "bookings": {str(b.id): b.resource() for b in org.bookings.values()},
                    "deleted": list(org.deleted),
                    "contacts": {
                        str(c.id): c.resource()
                        for c in org.collections["contacts"].records.values()
                    },
                    "deleted_contacts": list(org.collections["contacts"].deleted),
                }
                for org in selected
            },
        }

    def log_since(self, seq: int) -> list[dict[str, Any]]:
        """Log entries with ``seq`` greater than the given one (seqs are 1, 2, 3...)."""
        return self.log[max(0, seq) :]

    # ---------------------------------------------------------------- mutating

    def mutate(
        self,
        count: int,
        org_id: str | None = None,
        kinds: Sequence[str] | None = None,
        resources: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Apply ``count`` random mutations now and return their log entries.

        Each mutation is of one of ``resources`` (default: bookings only), drawn uniformly.
        """
        allowed = tuple(kinds) if kinds else MUTATION_KINDS
        unknown = sorted(set(allowed) - set(MUTATION_KINDS))
        if unknown:
            raise MutationError(f"unknown mutation kinds: {', '.join(unknown)}")
        chosen = tuple(resources) if resources else ("bookings",)
        unknown = sorted(set(chosen) - set(RESOURCES))
        if unknown:
            raise MutationError(f"unknown resources: {', '.join(unknown)}")
        if org_id is not None and org_id not in self.orgs:
            raise MutationError(f"unknown org {org_id}")
        out = []
        for _ in range(count):
            # A single resource draws nothing, so bookings-only runs keep their sequence.
            resource = chosen[0] if len(chosen) == 1 else self.rng.choice(chosen)
            out.append(self._mutate_once(org_id, allowed, resource))
        return out

    def add_org(self, bookings: int, contacts: int = 10) -> str:
        """Add an organization whose bookings and contacts already have some history."""
        org = self._new_org()
        anchor = int(self.clock())
        self._populate([org], bookings, anchor)
        self._seed_contacts([org], contacts, anchor)
        return org.id

    def remove_org(self, org_id: str) -> None:
        """Remove an organization; its id is never reused."""
        if self.orgs.pop(org_id, None) is None:
            raise MutationError(f"unknown org {org_id}")

    def schema_add(self, name: str, value: Any) -> None:
        """Every booking, present and future, gains attribute ``name`` = ``value``.

        Like a new API release, this does not move ``updated_at``.
        """
        if not name or name in ("id", "type"):
            raise SchemaError(f"invalid attribute name {name!r}")
        if self._has_attribute(name):
            raise SchemaError(f"bookings already have attribute {name!r}")
        if name in CORE_ATTRIBUTES:
            self._removed.discard(name)
        else:
            self._extra[name] = value
        for booking in self._all_bookings():
            booking.attributes[name] = value
            booking.invalidate()

    def schema_remove(self, name: str) -> None:
        """Every booking, present and future, loses attribute ``name``."""
        if name in PROTECTED_ATTRIBUTES:
            raise SchemaError(f"{name} cannot be removed: sorting and filtering need it")
        if not self._has_attribute(name):
            raise SchemaError(f"bookings have no attribute {name!r}")
        if name in self._extra:
            del self._extra[name]
        else:
            self._removed.add(name)
        for booking in self._all_bookings():
            booking.attributes.pop(name, None)
            booking.invalidate()

    # --------------------------------------------------------------- internals

    def _has_attribute(self, name: str) -> bool:
        return name in self._extra or (name in CORE_ATTRIBUTES and name not in self._removed)

    def _all_bookings(self) -> Iterable[Booking]:
        for org in self.orgs.values():
            yield from org.bookings.values()

    def _related_id(self) -> str:
        value = str(self._next_related)
        self._next_related += 1
        return value

    def _new_org(self) -> Org:
        rng = self.rng
        org_id = str(self._next_org)
        self._next_org += 1
        attributes = fakedata.org_attributes(rng, self._orgs_created)
        self._orgs_created += 1
        accounts = {self._related_id(): fakedata.account_attributes(rng) for _ in range(12)}
        contacts = {self._related_id(): fakedata.contact_attributes(rng) for _ in range(20)}
        users = {}
        for index in range(4):
            users[self._related_id()] = fakedata.user_attributes(rng, index + 1)
        base = (int(org_id) - _FIRST_ORG_ID) * 10
        org = Org(
            id=org_id,
            attributes=attributes,
            accounts=accounts,
            contacts=contacts,
            users=users,
            stage_ids=[base + n for n in range(1, 6)],
            referral_source_ids=[base + n for n in range(1, 5)],
        )
        self.orgs[org_id] = org
        return org

    def _populate(self, orgs: Sequence[Org], per_org: int, anchor: int) -> None:
        """Give each org ``per_org`` bookings created and updated before ``anchor``.

        Timestamps are drawn from a pool of shared instants, so many bookings share
        an ``updated_at`` second; ids are handed out in creation order across orgs.
        """
        rng = self.rng
        owners = [org for org in orgs for _ in range(per_org)]
        if not owners:
            return
        rng.shuffle(owners)
        # Seconds before the anchor, ascending: a smaller index is a more recent instant.
        moments = sorted(rng.randint(30, _HISTORY_SECONDS) for _ in range(max(1, len(owners) // 3)))
        today = datetime.fromtimestamp(anchor, UTC).date()
        drafts: list[_Draft] = []
        for order, org in enumerate(owners):
            created_index = rng.randrange(len(moments))
            updated_index = rng.randint(0, created_index)
            attributes, relationships = self._draft(org, today)
            drafts.append(
                _Draft(
                    created_ts=anchor - moments[created_index],
                    order=order,
                    org=org,
                    updated_ts=anchor - moments[updated_index],
                    attributes=attributes,
                    relationships=relationships,
                )
            )
        drafts.sort(key=lambda d: (d.created_ts, d.order))
        for draft in drafts:
            self._insert(
                draft.org, draft.created_ts, draft.updated_ts, draft.attributes, draft.relationships
            )

    def _seed_contacts(self, orgs: Sequence[Org], per_org: int, anchor: int) -> None:
        """Give each org ``per_org`` contacts created and updated before ``anchor``."""
        rng = self._contact_rng
        drafts: list[tuple[int, int, Org, int, dict[str, Any], dict[str, str | None]]] = []
        for org in orgs:
            for _ in range(per_org):
                created = anchor - rng.randint(30, _HISTORY_SECONDS)
                updated = rng.randint(created, anchor - 30)
                attributes, relationships = contacts.draft(org, rng)
                drafts.append((created, len(drafts), org, updated, attributes, relationships))
        drafts.sort(key=lambda d: (d[0], d[1]))
        for created, _order, org, updated, attributes, relationships in drafts:
            self._insert(org, created, updated, attributes, relationships, "contacts")

    def _draft(self, org: Org, today: date) -> tuple[dict[str, Any], dict[str, str | None]]:
        """Random attributes (without timestamps) and relationships of a new booking."""
        rng = self.rng
        start_date, end_date = fakedata.dates(rng, today)
        start_time, end_time = fakedata.times(rng)
        guests = fakedata.guest_count(rng)
        attributes: dict[str, Any] = {
            "name": fakedata.booking_name(rng),
            "status": fakedata.status(rng),
            "start_date": start_date,
            "end_date": end_date,
            "start_time": start_time,
            "end_time": end_time,
            "guest_count": guests,
            "total_amount": fakedata.total_amount(rng, guests),
            "currency": org.attributes["currency"],
            "notes": fakedata.notes(rng),
            "stage_id": rng.choice(org.stage_ids),
            "referral_source_id": rng.choice([None, *org.referral_source_ids]),
        }
        relationships: dict[str, str | None] = {
            "account": rng.choice(list(org.accounts)),
            "contact": None if rng.random() < 0.25 else rng.choice(list(org.contacts)),
            "owner": rng.choice(list(org.users)),
        }
        return attributes, relationships

    def _insert(
        self,
        org: Org,
        created_ts: int,
        updated_ts: int,
        attributes: dict[str, Any],
        relationships: dict[str, str | None],
        resource: str = "bookings",
    ) -> Record:
        """Store a new record under the next id (bookings honour schema changes)."""
        record_id = self._next_id[resource]
        self._next_id[resource] += 1
        attributes["created_at"] = format_ts(created_ts)
        attributes["updated_at"] = format_ts(updated_ts)
        if resource == "bookings":
            for name in self._removed:
                attributes.pop(name, None)
            attributes.update(self._extra)
        record = Record(record_id, org.id, updated_ts, attributes, relationships, resource)
        collection = org.collections[resource]
        collection.records[record_id] = record
        # Ids grow with creation, so appending keeps the id index sorted.
        collection.ids.append(record_id)
        bisect.insort(collection.by_updated, (updated_ts, record_id))
        return record

    def _set_updated(self, org: Org, booking: Record, now: int) -> None:
        """Move a record's ``updated_at`` to ``now`` and re-file it in the index."""
        index = org.collections[booking.type].by_updated
        old_key = (booking.updated_ts, booking.id)
        del index[bisect.bisect_left(index, old_key)]
        booking.updated_ts = now
        booking.attributes["updated_at"] = format_ts(now)
        bisect.insort(index, (now, booking.id))
        booking.invalidate()

    def _pick_org(self, org_id: str | None) -> Org:
        if org_id is not None:
            org = self.orgs.get(org_id)
            if org is None:
                raise MutationError(f"unknown org {org_id}")
            return org
        if not self.orgs:
            raise MutationError("there are no organizations to mutate")
        return self.orgs[self.rng.choice(list(self.orgs))]

    def _mutate_once(
        self, org_id: str | None, kinds: tuple[str, ...], resource: str
    ) -> dict[str, Any]:
        rng = self.rng
        org = self._pick_org(org_id)
        collection = org.collections[resource]
        kind = rng.choices(kinds, weights=[_KIND_WEIGHTS[k] for k in kinds])[0]
        if kind != "create" and not collection.records:
            if "create" not in kinds:
                raise MutationError(f"org {org.id} has no {resource} to {kind}")
            kind = "create"
        now = int(self.clock())
        fields: list[str]
        if kind == "create":
            if resource == "bookings":
                today = datetime.fromtimestamp(now, UTC).date()
                attributes, relationships = self._draft(org, today)
            else:
                attributes, relationships = contacts.draft(org, rng)
            booking = self._insert(org, now, now, attributes, relationships, resource)
            fields = [*booking.attributes, *booking.relationships]
        else:
            booking = collection.records[collection.ids[rng.randrange(len(collection.ids))]]
            if kind == "delete":
                self._delete(org, booking)
                fields = []
            elif kind == "touch":
                self._set_updated(org, booking, now)
                fields = ["updated_at"]
            elif resource == "bookings":
                fields = self._update(org, booking, now)
            else:
                fields = self._update_contact(org, booking, now)
        return self._record(org, booking, kind, fields)

    def _delete(self, org: Org, booking: Record) -> None:
        collection = org.collections[booking.type]
        del collection.records[booking.id]
        del collection.ids[bisect.bisect_left(collection.ids, booking.id)]
        key = (booking.updated_ts, booking.id)
        del collection.by_updated[bisect.bisect_left(collection.by_updated, key)]
        collection.deleted.append(str(booking.id))

    def _update_contact(self, org: Org, contact: Record, now: int) -> list[str]:
        """Edit a contact (see :func:`contacts.edit`) and move its ``updated_at``."""
        changed = contacts.edit(org, contact, self.rng)
        self._set_updated(org, contact, now)
        return sorted(changed | {"updated_at"})

    def _update(self, org: Org, booking: Booking, now: int) -> list[str]:
        """Edit a random subset of attributes (sometimes a relationship); return what changed."""
        rng = self.rng
        attributes = booking.attributes
        groups = [g for g, names in _UPDATE_GROUPS.items() if any(n in attributes for n in names)]
        changes: dict[str, Any] = {}
        if groups:
            for group in rng.sample(groups, rng.randint(1, min(3, len(groups)))):
                changes.update(self._edit(group, org, booking, now))
        changed = {k for k, v in changes.items() if k in attributes and attributes[k] != v}
        for name in changed:
            attributes[name] = changes[name]
        if not changed or rng.random() < 0.2:
            changed.add(self._edit_relationship(org, booking))
        self._set_updated(org, booking, now)
        return sorted(changed | {"updated_at"})

    # One return per attribute group.
    def _edit(self, group: str, org: Org, booking: Booking, now: int) -> dict[str, Any]:  # noqa: PLR0911
        """New values for one attribute group, different from the current ones."""
        rng = self.rng
        current = booking.attributes
        if group == "name":
            return {"name": _different(lambda: fakedata.booking_name(rng), current.get("name"))}
        if group == "status":
            return {
                "status": rng.choice([s for s in fakedata.STATUSES if s != current.get("status")])
            }
        if group == "dates":
            today = datetime.fromtimestamp(now, UTC).date()
            old = (current.get("start_date"), current.get("end_date"))
            start, end = _different(lambda: fakedata.dates(rng, today), old)
            return {"start_date": start, "end_date": end}
        if group == "times":
            old = (current.get("start_time"), current.get("end_time"))
            start, end = _different(lambda: fakedata.times(rng), old)
            return {"start_time": start, "end_time": end}
        if group == "guest_count":
            old_guests = current.get("guest_count")
            guests = _different(lambda: fakedata.guest_count(rng), old_guests)
            return {"guest_count": guests, "total_amount": fakedata.total_amount(rng, guests)}
        if group == "total_amount":
            head_count = current.get("guest_count")
            base = head_count if isinstance(head_count, int) and head_count > 0 else 50
            amount = _different(
                lambda: fakedata.total_amount(rng, base), current.get("total_amount")
            )
            return {"total_amount": amount}
        if group == "notes":
            return {"notes": _different(lambda: fakedata.notes(rng), current.get("notes"))}
        if group == "stage_id":
            return {
                "stage_id": rng.choice([s for s in org.stage_ids if s != current.get("stage_id")])
            }
        choices = [None, *org.referral_source_ids]
        old_source = current.get("referral_source_id")
        return {"referral_source_id": rng.choice([r for r in choices if r != old_source])}

    def _edit_relationship(self, org: Org, booking: Booking) -> str:
        """Point one relationship elsewhere; return its name."""
        rng = self.rng
        name = rng.choice(("contact", "contact", "owner", "account"))
        options: list[str | None]
        if name == "contact":
            options = [None, *org.contacts]
        elif name == "owner":
            options = list(org.users)
        else:
            options = list(org.accounts)
        current = booking.relationships.get(name)
        booking.relationships[name] = rng.choice([o for o in options if o != current])
        return name

    def _record(self, org: Org, booking: Booking, kind: str, fields: list[str]) -> dict[str, Any]:
        entry = {
            "seq": len(self.log) + 1,
            "at": self.clock(),
            "org": org.id,
            "resource": booking.type,
            "id": str(booking.id),
            "kind": kind,
            "fields": fields,
            "updated_at": None if kind == "delete" else booking.attributes["updated_at"],
        }
        self.log.append(entry)
        return entry


def _different(make: Callable[[], _T], current: object) -> _T:
    """Draw values until one differs from ``current`` (bounded: data pools are large)."""
    value = make()
    for _ in range(20):
        if value != current:
            break
        value = make()
    return value
