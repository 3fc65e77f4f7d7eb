"""Change detection, pure: canonical records, fingerprints, diffs, schema drift.

Nothing here touches Redis, HTTP or Celery (a design wall): the poller reads
state, calls these functions on plain dicts and commits what they return.
The pieces, in the order a poll uses them::

    canonical(resource)          JSON:API resource object -> canonical form
    schema_drift(res, known, page)   attributes the API started / stopped returning
    diff_records(res, stored, page, ignore, absorb=...)  -> created / updated / snapshot
    deletions(res, stored, seen)     stored but not seen in a complete sweep -> deleted

The exact digests of the poller's fast path are in digest.py. The canonical
form, the equality rules and the schema-drift bookkeeping (which
:func:`etbridge.pagediff.diff_page` carries out): docs/changes.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from etbridge.errors import MalformedResponse

JsonObj: TypeAlias = dict[str, Any]
Op: TypeAlias = Literal["created", "updated", "deleted", "snapshot"]

#: Prefix of relationship names in ``changes``, ignore lists and absorb sets.
REL_PREFIX = "relationships."

__all__ = [
    "REL_PREFIX",
    "Change",
    "DiffResult",
    "JsonObj",
    "MalformedRecord",
    "Op",
    "SchemaChange",
    "Stored",
    "attribute_changes",
    "canonical",
    "canonical_json",
    "deletions",
    "diff_records",
    "fingerprint",
    "page_fields",
    "record_fields",
    "schema_drift",
]


class MalformedRecord(MalformedResponse, ValueError):
    """A resource object that is not what JSON:API promises (no string id, ...).

    It is a :class:`~etbridge.errors.MalformedResponse` (retriable: the page is
    read again later) and a ``ValueError``. Messages name the problem, never
    the record's content.
    """


# One encoder for every call: json.dumps with keyword arguments builds a new
# JSONEncoder each time, which is a fifth of the cost of a small record.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_ASCII_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --- canonical form -----------------------------------------------------------


def _identifier(value: Any) -> JsonObj:
    # dict before the Mapping ABC, whose check costs ten times more.
    if not isinstance(value, (dict, Mapping)):
        raise MalformedRecord(f"relationship linkage is a {type(value).__name__}, not an object")
    rtype, rid = value.get("type"), value.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str):
        raise MalformedRecord("relationship linkage without string type and id")
    # meta of a resource identifier is not the relationship's value: dropped.
    return {"type": rtype, "id": rid}


def _linkage(data: Any) -> Any:
    if data is None:
        return None
    if isinstance(data, list):
        # To-many linkage is a set in practice; an API free to return it in any
        # order (a SQL join without ORDER BY) must not flood us with changes.
        return sorted((_identifier(item) for item in data), key=lambda i: (i["type"], i["id"]))
    return _identifier(data)


_STR_ONLY = {str}


def _attributes(rid: str, raw: Any) -> JsonObj:
    """A resource's ``attributes`` as a dict (``{}`` when missing or null)."""
    if raw is None:
        return {}
    if not isinstance(raw, (dict, Mapping)):
        raise MalformedRecord(f"resource {rid!r}: attributes is not an object")
    attrs = dict(raw)
    # JSON objects have string keys; anything else cannot be sorted nor stored.
    # (set(map(type, ...)) runs in C: a generator per key was a tenth of canonical().)
    if attrs and set(map(type, attrs)) != _STR_ONLY:
        raise MalformedRecord(f"resource {rid!r}: attribute name that is not a string")
    return attrs


def canonical(resource: Mapping[str, Any]) -> JsonObj:
    """The canonical form of one JSON:API resource object.

    ``{"type", "id", "attributes": {...}, "relationships": {name: {"data":
    linkage}}}``; missing or ``null`` ``attributes``/``relationships`` become
    ``{}``; a relationship without a ``data`` member (links only) is left out,
    as its linkage is unknown; to-many linkage is sorted by (type, id);
    ``links`` and ``meta`` are dropped. Idempotent.

    Raises :class:`MalformedRecord` on a non-object, a missing, empty or
    non-string ``id`` or ``type``, non-object ``attributes``/``relationships``
    or a malformed linkage.
    """
    if not isinstance(resource, (dict, Mapping)):
        raise MalformedRecord(f"resource object is a {type(resource).__name__}, not an object")
    rid = resource.get("id")
    if not isinstance(rid, str) or not rid:
        raise MalformedRecord("resource object without a string id")
    rtype = resource.get("type")
    if not isinstance(rtype, str) or not rtype:
        raise MalformedRecord(f"resource {rid!r} without a string type")
    attrs = _attributes(rid, resource.get("attributes"))
    raw_rels = resource.get("relationships")
    rels: JsonObj = {}
    if raw_rels is not None:
        if not isinstance(raw_rels, (dict, Mapping)):
            raise MalformedRecord(f"resource {rid!r}: relationships is not an object")
        for name, rel in raw_rels.items():
            if type(name) is not str or not isinstance(rel, (dict, Mapping)):
                raise MalformedRecord(f"resource {rid!r}: malformed relationship")
            if "data" in rel:
                data = rel["data"]
                # The common to-one linkage inline (a call per relationship was a third
                # of canonical()); anything else takes _linkage's full checks.
                if type(data) is dict:
                    ltype, lid = data.get("type"), data.get("id")
                    if isinstance(ltype, str) and isinstance(lid, str):
                        rels[name] = {"data": {"type": ltype, "id": lid}}
                        continue
                try:
                    rels[name] = {"data": _linkage(data)}
                except MalformedRecord as exc:
                    raise MalformedRecord(
                        f"resource {rid!r} relationship {name!r}: {exc}"
                    ) from None
    return {"type": rtype, "id": rid, "attributes": attrs, "relationships": rels}


def canonical_json(canon: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the bytes that are hashed and stored.

    Deterministic for a given value. Text that UTF-8 cannot carry (a lone
    surrogate from a ``\\ud800`` escape) falls back to ASCII escapes, so odd
    input never crashes the diff and still round-trips through ``json.loads``.
    """
    try:
        return _ENCODER.encode(canon).encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(canon).encode("ascii")


def _linkage_of(rel: Any) -> Any:
    """The linkage in a canonical relationship member (``{"data": linkage}``)."""
    return rel.get("data") if isinstance(rel, Mapping) else rel


def fingerprint(canon: Mapping[str, Any], ignore_fields: Collection[str]) -> str:
    """Hash of what counts as a change: the canonical form without ignored names.

    ``null`` attributes and ``null`` relationship linkage are left out, so an
    attribute absent in one version and ``null`` in the other fingerprints the
    same. Two records with equal fingerprints never produce an event.
    """
    attrs = {
        k: v
        for k, v in canon.get("attributes", {}).items()
        if v is not None and k not in ignore_fields
    }
    rels = {}
    for name, rel in canon.get("relationships", {}).items():
        link = _linkage_of(rel)
        if link is not None and REL_PREFIX + name not in ignore_fields:
            rels[name] = link
    return _hash(
        canonical_json(
            {
                "type": canon.get("type"),
                "id": canon.get("id"),
                "attributes": attrs,
                "relationships": rels,
            }
        )
    )


def record_fields(canon: Mapping[str, Any], *, relationships: bool = False) -> set[str]:
    """Names a record carries: its attribute names, plus ``relationships.NAME``
    when ``relationships`` is true (present even when ``null``)."""
    names = set(canon.get("attributes", ()))
    if relationships:
        names.update(REL_PREFIX + name for name in canon.get("relationships", ()))
    return names


def page_fields(records: Iterable[Mapping[str, Any]], *, relationships: bool = False) -> set[str]:
    """Union of :func:`record_fields` over a page: what ``known`` grows by."""
    names: set[str] = set()
    for rec in records:
        names.update(rec.get("attributes", ()))
        if relationships:
            names.update(REL_PREFIX + name for name in rec.get("relationships", ()))
    return names


# --- values and diffs ---------------------------------------------------------


_MISSING = object()


# Inlined on purpose, hence over the complexity and return limits: this walk is the whole
# cost of recognising an unchanged page (bench/diff.py measures it per 100 bookings).
def _same(a: Any, b: Any) -> bool:  # noqa: C901, PLR0911
    """Equality of JSON text: ``1``, ``1.0`` and ``True`` differ, as their JSON does,
    so a fingerprint (hash of the text) and this comparison always agree."""
    if a is b:
        return True
    t = type(a)
    if t is not type(b):
        return False
    if t is dict:
        if len(a) != len(b):
            return False
        # Inlined for the common case (string and integer values): this walk is
        # the whole cost of recognizing an unchanged record.
        for k, v in a.items():
            w = b.get(k, _MISSING)
            if v is w:
                continue
            tv = type(v)
            if tv is not type(w):
                return False
            if tv is str or tv is int:
                if v != w:
                    return False
            elif not _same(v, w):
                return False
        return True
    if t is list:
        return len(a) == len(b) and all(map(_same, a, b))
    if t is float:
        # As JSON text: -0.0 differs from 0.0, and NaN equals itself.
        return repr(a) == repr(b)
    return bool(a == b)


@dataclass(frozen=True)
class Stored:
    """What state keeps of one record.

    ``fingerprint`` is :func:`fingerprint` of ``record`` (with the ignore list
    in force); ``record`` is the canonical form last stored, i.e. the last
    emitted ``after`` give or take ignored fields and absorbed attributes.
    """

    fingerprint: str
    record: JsonObj


@dataclass(frozen=True)
class Change:
    """One detected change of one record; :func:`etbridge.events.envelope` makes it an event."""

    op: Op
    resource: str
    id: str
    before: JsonObj | None
    after: JsonObj | None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SchemaChange:
    """Attribute names the API started (``added``) or stopped (``removed``) returning."""

    resource: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass
class DiffResult:
    """The events of one page and the snapshots it moves.

    ``writes`` holds every record whose stored form must be (re)written:
    created, updated, and records that moved only in ignored fields, ``null``
    versus absent, or absorbed names (no event for those).
    """

    changes: list[Change] = field(default_factory=list)
    writes: dict[str, Stored] = field(default_factory=dict)


def _member_changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    prefix: str,
    ignore: Collection[str],
    absorb: Collection[str],
    out: dict[str, dict[str, Any]],
    *,
    unwrap: bool,
) -> None:
    if before.keys() == after.keys():
        names: Iterable[str] = before.keys()
    else:
        names = before.keys() | after.keys()
    for name in names:
        key = prefix + name
        if key in ignore:
            continue
        has_b, has_a = name in before, name in after
        old, new = before.get(name), after.get(name)
        if unwrap:
            old, new = _linkage_of(old), _linkage_of(new)
        if has_b != has_a and key in absorb:
            continue
        # Absent and null are the same value (absent .get() gives None).
        if not _same(old, new):
            out[key] = {"from": old, "to": new}


def attribute_changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    ignore_fields: Collection[str],
    absorb: Collection[str] = (),
) -> dict[str, dict[str, Any]]:
    """``{name: {"from": old, "to": new}}`` for every attribute and
    ``relationships.NAME`` (linkage ``data``) that differs, sorted by name.

    Skips ignored names, treats absent as ``null``, and skips an absorbed name
    present on one side only (its appearance or disappearance is schema drift).
    Symmetric: swapping the arguments swaps ``from`` and ``to``.
    """
    out: dict[str, dict[str, Any]] = {}
    _member_changes(
        before.get("attributes") or {},
        after.get("attributes") or {},
        "",
        ignore_fields,
        absorb,
        out,
        unwrap=False,
    )
    _member_changes(
        before.get("relationships") or {},
        after.get("relationships") or {},
        REL_PREFIX,
        ignore_fields,
        absorb,
        out,
        unwrap=True,
    )
    return dict(sorted(out.items()))


def _record_id(rec: Any) -> str:
    rid = rec.get("id") if isinstance(rec, Mapping) else None
    if not isinstance(rid, str) or not rid:
        raise MalformedRecord("record without a string id")
    return rid


def diff_records(
    resource: str,
    stored: Mapping[str, Stored | None],
    records: Sequence[JsonObj],
    ignore_fields: Collection[str],
    *,
    baseline: bool = False,
    emit_baseline: bool = False,
    absorb: Collection[str] = (),
) -> DiffResult:
    """Diff one page of canonical records against their stored versions.

    ``stored`` maps record ids to what state holds (missing or ``None``: never
    stored); only the page's ids are looked up. Per record:

    - new id: ``created``; on the baseline (the org's first sweep) a
      ``snapshot`` if ``emit_baseline``, else nothing; always written;
    - identical to the stored record: nothing;
    - different, but no counted difference (ignored fields, ``null`` versus
      absent, absorbed names): no event, written;
    - otherwise ``updated`` with ``before`` = the stored record and
      :func:`attribute_changes`; written.

    Events are decided on the records, never on fingerprints, so a stored
    fingerprint computed under another ignore list does no harm.
    Raises :class:`MalformedRecord` when an id occurs twice in the page (or a
    record has no string id). ``absorb``: see docs/changes.md.
    """
    ignore = ignore_fields if isinstance(ignore_fields, (set, frozenset)) else set(ignore_fields)
    absorbed = absorb if isinstance(absorb, (set, frozenset)) else set(absorb)
    result = DiffResult()
    seen: set[str] = set()
    for rec in records:
        rid = _record_id(rec)
        if rid in seen:
            raise MalformedRecord(f"{resource}: id {rid!r} occurs twice in one page")
        seen.add(rid)
        prev = stored.get(rid)
        if prev is None:
            if not baseline:
                result.changes.append(Change("created", resource, rid, None, rec, {}))
            elif emit_baseline:
                result.changes.append(Change("snapshot", resource, rid, None, rec, {}))
            result.writes[rid] = Stored(fingerprint(rec, ignore), rec)
            continue
        # The common case, an unchanged record, costs one comparison: no hashing.
        if _same(prev.record, rec):
            continue
        result.writes[rid] = Stored(fingerprint(rec, ignore), rec)
        diff = attribute_changes(prev.record, rec, ignore, absorbed)
        if diff:
            result.changes.append(Change("updated", resource, rid, prev.record, rec, diff))
    return result


def deletions(
    resource: str, stored: Mapping[str, Stored | None], seen_ids: Collection[str]
) -> list[Change]:
    """``deleted`` changes for stored records that a COMPLETE sweep did not see.

    Call it only after a sweep that listed every page: a cut-short sweep
    declares no deletion. ``before`` is the stored record, ``after`` ``None``;
    the order is ``stored``'s iteration order.
    """
    seen = seen_ids if isinstance(seen_ids, (set, frozenset, dict)) else set(seen_ids)
    return [
        Change("deleted", resource, rid, prev.record, None, {})
        for rid, prev in stored.items()
        if prev is not None and rid not in seen
    ]


def schema_drift(
    resource: str,
    known: Collection[str],
    records: Sequence[Mapping[str, Any]],
    *,
    relationships: bool = False,
) -> SchemaChange | None:
    """The schema change a page reveals, or ``None``.

    ``known`` is the set of names the org's stored snapshots carry (see
    docs/changes.md). With an empty ``known`` (the baseline) or an empty page
    there is no drift. Otherwise:

    - ``added``: names some record of the page has (even as ``null``) that no
      stored snapshot ever had;
    - ``removed``: known names that no record of the page has. JSON:API
      returns every attribute of every record, so a name missing from a whole
      non-empty page is one the API stopped returning.

    ``relationships=True`` also watches relationship names (as
    ``relationships.NAME``, the key ``changes`` and ``absorb`` use); ``known``
    must then be grown with ``page_fields(..., relationships=True)``. Without
    it, ``relationships.*`` entries of ``known`` are not considered.
    """
    if not known or not records:
        return None
    present = page_fields(records, relationships=relationships)
    if relationships:
        watched = set(known)
    else:
        watched = {name for name in known if not name.startswith(REL_PREFIX)}
    added = present - watched
    removed = watched - present
    if not added and not removed:
        return None
    return SchemaChange(resource, tuple(sorted(added)), tuple(sorted(removed)))
