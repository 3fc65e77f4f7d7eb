"""Redis I/O of deletion safety: held deletions and the lost-access mark of an org.

A hold is one hash per org and resource (``Keyspace.deletion_hold``): the held
ids, why, since when, and, once an operator approved it, the ids approved
(applied by the org's next sweep, which ``approve`` requests). Lost access is
two fields of the org's meta hash (``inaccessible_since``,
``inaccessible_error``). The protocol: docs/deletions.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from etbridge import keys
from etbridge.state import text_hash


@dataclass(frozen=True)
class Hold:
    """The held deletions of one org and resource."""

    org_id: str
    resource: str
    ids: tuple[str, ...]
    reason: str
    stored: int
    since: float
    updated_at: float
    alerted: bool = False
    approved_ids: tuple[str, ...] = ()
    approved_at: float | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    def as_dict(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "resource": self.resource,
            "count": self.count,
            "reason": self.reason,
            "stored": self.stored,
            "since": self.since,
            "updated_at": self.updated_at,
            "approved": bool(self.approved_ids),
            "approved_at": self.approved_at,
            "ids": list(self.ids),
        }


def _hold_from(org_id: str, resource: str, raw: dict[str, str]) -> Hold | None:
    if not raw.get("ids"):
        return None
    return Hold(
        org_id=org_id,
        resource=resource,
        ids=tuple(json.loads(raw["ids"])),
        reason=raw.get("reason", ""),
        stored=int(raw.get("stored") or 0),
        since=float(raw.get("since") or 0),
        updated_at=float(raw.get("updated_at") or 0),
        alerted=raw.get("alerted") == "1",
        approved_ids=tuple(json.loads(raw["approved_ids"])) if raw.get("approved_ids") else (),
        approved_at=float(raw["approved_at"]) if raw.get("approved_at") else None,
    )


def read(client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str) -> Hold | None:
    raw = client.hgetall(ks.deletion_hold(org_id, resource))
    return _hold_from(org_id, resource, text_hash(raw))


def read_many(
    client: redis.Redis, ks: keys.Keyspace, org_ids: Iterable[str], resource: str
) -> dict[str, Hold | None]:
    """Holds of many orgs in one round trip (status, the CLI)."""
    ids = list(org_ids)
    pipe = client.pipeline(transaction=False)
    for org_id in ids:
        pipe.hgetall(ks.deletion_hold(org_id, resource))
    return {
        org_id: _hold_from(org_id, resource, text_hash(raw))
        for org_id, raw in zip(ids, pipe.execute(), strict=True)
    }


def write(
    client: redis.Redis,
    ks: keys.Keyspace,
    org_id: str,
    resource: str,
    ids: Sequence[str],
    *,
    reason: str,
    stored: int,
    now: float | None = None,
) -> bool:
    """Hold these ids; True when the hold is new (then the caller alerts, once).

    Fields are set one by one, so an approval written meanwhile (``approved_ids``)
    survives a sweep that renews the hold.
    """
    now = time.time() if now is None else now
    key = ks.deletion_hold(org_id, resource)
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key, "since", str(now))
    pipe.hsetnx(key, "alerted", "1")
    pipe.hset(
        key,
        mapping={
            "ids": json.dumps(list(ids)),
            "reason": reason,
            "stored": str(stored),
            "updated_at": str(now),
        },
    )
    fresh = bool(pipe.execute()[1])
    return fresh


def clear(client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str) -> bool:
    """Drop the hold; True if there was one."""
    return bool(client.delete(ks.deletion_hold(org_id, resource)))


def approve(client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str) -> Hold | None:
    """Approve the held ids as they are now (a sweep that renews the hold with more ids
    does not widen the approval); the org's next sweep deletes those still missing."""
    hold = read(client, ks, org_id, resource)
    if hold is None:
        return None
    client.hset(
        ks.deletion_hold(org_id, resource),
        mapping={"approved_ids": json.dumps(list(hold.ids)), "approved_at": str(time.time())},
    )
    # The next poll is a sweep, so the approval takes effect soon, not at the next interval.
    client.hset(ks.org_meta(org_id, resource), "resync", "1")
    return read(client, ks, org_id, resource)


def reject(client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str) -> Hold | None:
    """Keep the held bookings: drop the hold (a later sweep that misses them holds again)."""
    hold = read(client, ks, org_id, resource)
    if hold is not None:
        clear(client, ks, org_id, resource)
    return hold


# --- lost access ------------------------------------------------------------------


def mark_inaccessible(
    client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str, error: str
) -> bool:
    """Record lost access; True when it is new (then the caller alerts, once)."""
    key = ks.org_meta(org_id, resource)
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key, "inaccessible_since", str(time.time()))
    pipe.hset(key, "inaccessible_error", error[:300])
    return bool(pipe.execute()[0])


def mark_accessible(
    client: redis.Redis, ks: keys.Keyspace, org_id: str, resource: str
) -> float | None:
    """Access is back: clear the mark; returns since when it was lost (None: it was not)."""
    key = ks.org_meta(org_id, resource)
    pipe = client.pipeline(transaction=True)
    pipe.hget(key, "inaccessible_since")
    pipe.hdel(key, "inaccessible_since", "inaccessible_error")
    since, _ = pipe.execute()
    return float(since) if since else None
