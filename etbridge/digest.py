"""Exact digests of records, pure: the poller's fast path for unchanged records.

A record's digest (blake2b-128 of orjson's sorted compact JSON) is stored in
front of its snapshot (state.py); a page whose digests all match the stored
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
    "resource_digest",
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


def record_digest(canon: Mapping[str, Any]) -> bytes:
    """Exact hash of a canonical form, ignored fields included: 16 raw bytes.

    Equal digests mean identical records: nothing to diff, nothing to write.
    The hashed bytes are orjson's sorted compact JSON (a tenth of the cost of
    :func:`canonical_json`, which stays the form that is stored and shown),
    or :func:`canonical_json` for what orjson refuses (integers past 64 bits,
    lone surrogates, non-string keys, and :class:`NonFinite`).
    """
    try:
        data = orjson.dumps(canon, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        data = canonical_json(canon)
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


_PLAIN_KEYS = frozenset({"type", "id", "attributes", "relationships"})


def resource_digest(resource: Any) -> bytes | None:
    """:func:`record_digest` of a resource object as served, if it is plainly shaped.

    Plainly shaped: a dict of ``type``/``id``/``attributes``/``relationships``
    only, with a non-empty string id. Equal served objects have equal canonical
    forms, and a canonical form is plainly shaped (its digest is the same hash
    of the same bytes), so a stored digest of either kind says "unchanged" only
    for an equal record, and an unchanged page skips :func:`canonical` (half of
    its CPU). ``None`` otherwise (``links``, ``meta``, a malformed object):
    digest the canonical form.
    """
    if type(resource) is not dict or not resource.keys() <= _PLAIN_KEYS:
        return None
    rid = resource.get("id")
    if type(rid) is not str or not rid:
        return None
    return record_digest(resource)


def page_digests(data: Sequence[Any]) -> tuple[list[str], dict[str, bytes], dict[str, JsonObj]]:
    """Ids and digests of a page as served, and the canonical forms made on the way.

    Objects that are not plainly shaped are made canonical (and digested so);
    :class:`~etbridge.changes.MalformedRecord` for one that cannot be.
    """
    ids: list[str] = []
    digests: dict[str, bytes] = {}
    made: dict[str, JsonObj] = {}
    for item in data:
        value = resource_digest(item)
        if value is None:
            record = canonical(item)
            rid = record["id"]
            value = record_digest(record)
            made[rid] = record
        else:
            rid = item["id"]
        ids.append(rid)
        digests[rid] = value
    return ids, digests, made
