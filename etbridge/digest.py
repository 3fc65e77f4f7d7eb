"""Exact digests of records, pure: the poller's fast path for unchanged records.

A record's digest (blake2b-128 of its compact JSON, as orjson writes it) is
stored in front of its snapshot (state.py); a page whose digests all match the stored
ones is done without a canonical form, a decode or a write. A digest that
differs for an equal record costs a diff that finds nothing, never an event;
equal digests for different records would lose a change, so every step here
keeps them apart. Protocol: docs/page-commit.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from etbridge.changes import JsonObj, canonical, canonical_json

__all__ = [
    "DIGEST_SIZE",
    "NonFinite",
    "page_digests",
    "parse_constant",
    "record_digest",
]

#: Bytes of :func:`record_digest` (state.py stores them raw, in front of the snapshot).
DIGEST_SIZE = 16


class NonFinite(float):
    """NaN or +-Infinity as the API parser reads them (``json.loads`` accepts them).

    Not JSON, but a body may hold them. orjson refuses a float subclass (and
    writes a plain NaN as null), so :func:`record_digest` hashes these through
    :func:`canonical_json`, which writes ``NaN``/``Infinity``: null != NaN.
    """


def parse_constant(name: str) -> float:
    """``json.loads(..., parse_constant=parse_constant)``: NaN/Infinity as :class:`NonFinite`."""
    return NonFinite(name)


def record_digest(record: Mapping[str, Any]) -> bytes:
    """Exact hash of a record (canonical or as served): 16 raw bytes.

    Equal digests mean identical records: nothing to diff, nothing to write.
    The hashed bytes are orjson's compact JSON in the record's own key order
    (a tenth of the cost of :func:`canonical_json`, which stays the form that
    is stored and shown), or :func:`canonical_json` for what orjson refuses
    (integers past 64 bits, lone surrogates, non-string keys, and
    :class:`NonFinite`). An equal record in another key order digests apart:
    that costs a diff that finds nothing, never an event.
    """
    try:
        data = orjson.dumps(record)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        data = canonical_json(record)
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


_PLAIN_KEYS = frozenset({"type", "id", "attributes", "relationships"})


def page_digests(data: Sequence[Any]) -> tuple[list[str], dict[str, bytes], dict[str, JsonObj]]:
    """Ids and digests of a page as served, and the canonical forms made on the way.

    A plainly shaped object (a dict of ``type``/``id``/``attributes``/
    ``relationships`` only, with a non-empty string id) is digested as served,
    in the API's key order: equal bytes are equal objects, whose canonical
    forms are equal, so a stored digest says
    "unchanged" only for an equal record, and an unchanged page never runs
    :func:`canonical` (half of its CPU). An equal record served in another key
    or linkage order only costs a diff that finds nothing. Others (``links``,
    ``meta``, malformed) are made canonical and digested by
    :func:`record_digest`; :class:`~etbridge.changes.MalformedRecord` for one
    that cannot be.
    """
    ids: list[str] = []
    digests: dict[str, bytes] = {}
    made: dict[str, JsonObj] = {}
    # Inline, not a call to a helper per record: two calls were a sixth of the page.
    dumps, blake2b = orjson.dumps, hashlib.blake2b
    for item in data:
        rid = item.get("id") if type(item) is dict else None
        if type(rid) is str and rid and item.keys() <= _PLAIN_KEYS:
            try:
                value = blake2b(dumps(item), digest_size=DIGEST_SIZE).digest()
            except TypeError:  # what orjson refuses (see record_digest): the exact fallback
                value = record_digest(item)
        else:
            record = canonical(item)
            rid = record["id"]
            value = record_digest(record)
            made[rid] = record
        ids.append(rid)
        digests[rid] = value
    return ids, digests, made
