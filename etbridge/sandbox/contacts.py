"""Contacts, the sandbox's second collection (a shape inferred from bookings).

What differs from bookings: the attributes a new contact gets and what an update
edits. Storage, indexes, pagination and the log are the store's, shared.
"""

from __future__ import annotations

import random
from typing import Any

from etbridge.sandbox import fakedata
from etbridge.sandbox.records import Org, Record

#: Attribute groups an update edits together.
GROUPS: dict[str, tuple[str, ...]] = {
    "name": ("first_name", "last_name"),
    "email": ("email",),
    "phone": ("phone",),
    "title": ("title",),
}


def draft(org: Org, rng: random.Random) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Random attributes (without timestamps) and relationships of a new contact."""
    attributes = fakedata.contact_attributes(rng)
    attributes["phone"] = fakedata.phone(rng)
    attributes["title"] = fakedata.job_title(rng)
    return attributes, {"account": rng.choice(list(org.accounts))}


def _new_values(group: str, rng: random.Random) -> dict[str, Any]:
    if group == "name":
        person = fakedata.contact_attributes(rng)
        return {"first_name": person["first_name"], "last_name": person["last_name"]}
    if group == "email":
        return {"email": fakedata.contact_attributes(rng)["email"]}
    if group == "phone":
        return {"phone": fakedata.phone(rng)}
    return {"title": fakedata.job_title(rng)}


def edit(org: Org, contact: Record, rng: random.Random) -> set[str]:
    """Give 1-2 groups new values (one time in five, or if nothing changed, a new account).

    Returns the names that changed; ``updated_at`` is the caller's to move.
    """
    attributes = contact.attributes
    changed: set[str] = set()
    for group in rng.sample(list(GROUPS), rng.randint(1, 2)):
        old = {name: attributes.get(name) for name in GROUPS[group]}
        new = old
        for _ in range(20):  # bounded: the data pools are large
            new = _new_values(group, rng)
            if new != old:
                break
        changed |= {k for k, v in new.items() if attributes.get(k) != v}
        attributes.update(new)
    if not changed or rng.random() < 0.2:
        current = contact.relationships.get("account")
        options = [a for a in org.accounts if a != current]
        if options:
            contact.relationships["account"] = rng.choice(options)
            changed.add("account")
    return changed
