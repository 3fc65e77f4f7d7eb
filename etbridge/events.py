"""CloudEvents envelopes of changes, with stable ids; pure (no Redis, HTTP, Celery).

The envelope is the one of ``CONTRACT.md`` (CloudEvents 1.0, JSON structured
mode): ``com.eventtemple.<singular>.<op>`` for a record's change (``data``: org,
resource, id, before, after, changes, detected_at), ``com.eventtemple.schema.changed``
for schema drift (``data``: org, resource, added, removed).

**Stable ids.** :func:`event_id` hashes (org, resource, record id, type, the
fingerprints of ``before`` and ``after``, the ``updated_at`` of ``after`` — of
``before`` for a deletion). It never hashes ``detected_at``, a worker or a
clock of ours, so a change detected twice (another worker, a crash before the
commit) gets the same id; and a record going A→B→A→B gets a new id for the
second A→B because the API moved its ``updated_at``. Timestamps are hashed in
their normalized form, so ``...Z`` and ``...+00:00`` spellings agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from etbridge.changes import Change, SchemaChange, canonical_json, fingerprint
from etbridge.timefmt import rfc3339

__all__ = [
    "APP_ATTRIBUTE",
    "OPS",
    "SCHEMA_CHANGED",
    "TYPE_PREFIX",
    "UPDATED_AT",
    "envelope",
    "event_id",
    "event_type",
    "parse_timestamp",
    "rfc3339",
    "schema_envelope",
    "schema_event_id",
    "singular",
    "source",
    "to_json",
    "validate_envelope",
]

SPECVERSION = "1.0"
#: The CloudEvents extension attribute naming the application (apps file only).
APP_ATTRIBUTE = "etapp"
TYPE_PREFIX = "com.eventtemple."
SCHEMA_CHANGED = "com.eventtemple.schema.changed"
OPS = ("created", "updated", "deleted", "snapshot")
#: The attribute that versions a record (the API's clock, not ours).
UPDATED_AT = "updated_at"

_TEXT_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ASCII_TEXT_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)

# Bumped if the hashed tuple ever changes: ids of the old scheme stay distinct.
_ID_SCHEME = "etb-event-1"
_SCHEMA_ID_SCHEME = "etb-schema-1"

_CHANGE_DATA_KEYS = frozenset(
    {"org_id", "resource", "id", "before", "after", "changes", "detected_at"}
)
_SCHEMA_DATA_KEYS = frozenset({"org_id", "resource", "added", "removed"})
_ENVELOPE_KEYS = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "orgid", "data"}
)
_TYPE_RE = re.compile(r"com\.eventtemple\.([a-z0-9_-]+)\.(created|updated|deleted|snapshot)")
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"
)

# --- resource names -------------------------------------------------------------

_IRREGULAR = {
    "people": "person",
    "statuses": "status",
    "series": "series",
    "data": "data",
}


def singular(resource: str) -> str:
    """The singular noun of a collection name: ``bookings`` -> ``booking``,
    ``activities`` -> ``activity``, ``addresses`` -> ``address``. English rules
    good enough for API collection names; unknown shapes are left as they are."""
    name = resource.strip().lower()
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    for irregular, single in _IRREGULAR.items():
        # snake/kebab compounds: event_statuses -> event_status
        if name.endswith(("_" + irregular, "-" + irregular)):
            return name[: -len(irregular)] + single
    if name.endswith("ies") and len(name) > len("ies"):
        return name[:-3] + "y"
    if name.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return name[:-2]
    if name.endswith("s") and not name.endswith("ss") and len(name) > 1:
        return name[:-1]
    return name


def event_type(resource: str, op: str) -> str:
    """``com.eventtemple.<singular>.<op>``; ``op`` is one of :data:`OPS`."""
    if op not in OPS:
        raise ValueError(f"unknown change op {op!r}")
    return f"{TYPE_PREFIX}{singular(resource)}.{op}"


def source(org_id: str, resource: str, app: str | None = None) -> str:
    """The CloudEvents ``source``: ``/orgs/<org_id>/<resource>``, or
    ``/apps/<app>/orgs/<org_id>/<resource>`` for an application of the apps file."""
    if app is not None:
        return f"/apps/{app}/orgs/{org_id}/{resource}"
    return f"/orgs/{org_id}/{resource}"


def _named(env: dict[str, Any], app: str | None) -> dict[str, Any]:
    """The envelope with the ``etapp`` extension attribute after ``orgid`` (apps file only)."""
    if app is None:
        return env
    out: dict[str, Any] = {}
    for key, value in env.items():
        out[key] = value
        if key == "orgid":
            out[APP_ATTRIBUTE] = app
    return out


# --- timestamps -----------------------------------------------------------------

_TS_RE = re.compile(
    r"\s*([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"\s*(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)?\s*"
)


def _to_utc(dt: datetime) -> datetime:
    # Naive means UTC: the API's timestamps are UTC, and so are ours.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_timestamp(value: Any) -> datetime | None:
    """Any ISO 8601 / RFC 3339 timestamp (``Z``, an offset, or none = UTC;
    ``T`` or space; any number of fraction digits) as an aware UTC datetime.
    A ``datetime`` is normalized the same way. ``None``, non-strings and
    garbage give ``None``: callers decide what a missing time means."""
    try:
        if isinstance(value, datetime):
            return _to_utc(value)
        if not isinstance(value, str):
            return None
        m = _TS_RE.fullmatch(value)
        if m is None:
            # Other ISO 8601 spellings (basic format, date only).
            return _to_utc(datetime.fromisoformat(value.strip()))
        year, month, day, hour, minute = (int(g) for g in m.group(1, 2, 3, 4, 5))
        second = int(m.group(6) or 0)
        micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
        tz = UTC
        if m.group(9):
            offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11) or 0))
            tz = timezone(-offset if m.group(9) == "-" else offset)
        leap = second == 60  # noqa: PLR2004  (a leap second is the instant the next one starts)
        dt = datetime(year, month, day, hour, minute, 59 if leap else second, micro, tzinfo=tz)
        if leap:
            dt += timedelta(seconds=1)
        return dt.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _updated_at(record: Mapping[str, Any] | None) -> Any:
    if record is None:
        return None
    attrs = record.get("attributes")
    return attrs.get(UPDATED_AT) if isinstance(attrs, Mapping) else None


def _version_stamp(record: Mapping[str, Any] | None) -> str:
    """The record's ``updated_at``, normalized when it parses, else its JSON text."""
    raw = _updated_at(record)
    parsed = parse_timestamp(raw)
    if parsed is not None:
        return rfc3339(parsed)
    return canonical_json({"v": raw}).decode("utf-8", "replace")


# --- ids and envelopes ----------------------------------------------------------


def _hash_parts(*parts: Any) -> str:
    # A JSON array is an unambiguous encoding of the tuple (no delimiter games).
    return hashlib.blake2b(canonical_json({"k": list(parts)}), digest_size=16).hexdigest()


def event_id(org_id: str, change: Change, ignore_fields: Collection[str]) -> str:
    """The stable id of a change event (32 hex digits); see the module docstring."""
    versioned = change.before if change.op == "deleted" else change.after
    return _hash_parts(
        _ID_SCHEME,
        org_id,
        change.resource,
        change.id,
        event_type(change.resource, change.op),
        fingerprint(change.before, ignore_fields) if change.before is not None else "",
        fingerprint(change.after, ignore_fields) if change.after is not None else "",
        _version_stamp(versioned),
    )


def schema_event_id(org_id: str, change: SchemaChange) -> str:
    """The id of a ``schema.changed`` event: org, resource, added and removed names."""
    return _hash_parts(
        _SCHEMA_ID_SCHEME,
        org_id,
        change.resource,
        sorted(change.added),
        sorted(change.removed),
    )


def envelope(
    org_id: str,
    change: Change,
    *,
    detected_at: datetime,
    ignore_fields: Collection[str],
    app: str | None = None,
) -> dict[str, Any]:
    """The CloudEvents envelope of one change, exactly as CONTRACT.md shows.

    ``time`` is the ``updated_at`` of ``after`` (RFC 3339, UTC), or
    ``detected_at`` for a deletion or a record without a usable ``updated_at``.
    ``before``/``after`` are the canonical forms (JSON:API resource objects),
    shared, not copied: serialize the envelope rather than mutating it.
    ``app`` (an application of the apps file) adds ``etapp`` and the
    ``/apps/<app>/...`` source; the id does not depend on it.
    """
    if change.op == "deleted":
        time = detected_at
    else:
        time = parse_timestamp(_updated_at(change.after)) or detected_at
    env = {
        "specversion": SPECVERSION,
        "id": event_id(org_id, change, ignore_fields),
        "source": source(org_id, change.resource, app),
        "type": event_type(change.resource, change.op),
        "subject": change.id,
        "time": rfc3339(time),
        "datacontenttype": "application/json",
        "orgid": org_id,
        "data": {
            "org_id": org_id,
            "resource": change.resource,
            "id": change.id,
            "before": change.before,
            "after": change.after,
            "changes": change.changes,
            "detected_at": rfc3339(detected_at),
        },
    }
    return _named(env, app)


def schema_envelope(
    org_id: str, change: SchemaChange, *, detected_at: datetime, app: str | None = None
) -> dict[str, Any]:
    """The ``com.eventtemple.schema.changed`` envelope: ``subject`` is the
    resource, ``time`` the detection time, ``data`` ``{org_id, resource,
    added, removed}`` (both lists present, sorted); ``app`` as in :func:`envelope`."""
    env = {
        "specversion": SPECVERSION,
        "id": schema_event_id(org_id, change),
        "source": source(org_id, change.resource, app),
        "type": SCHEMA_CHANGED,
        "subject": change.resource,
        "time": rfc3339(detected_at),
        "datacontenttype": "application/json",
        "orgid": org_id,
        "data": {
            "org_id": org_id,
            "resource": change.resource,
            "added": sorted(change.added),
            "removed": sorted(change.removed),
        },
    }
    return _named(env, app)


def to_json(env: Mapping[str, Any]) -> str:
    """The envelope as compact JSON text, safe to store anywhere.

    Like ``json.dumps(..., ensure_ascii=False)`` but never yields text that
    UTF-8 cannot encode (a lone surrogate in a record falls back to ASCII
    escapes), so writing it to Redis or a socket cannot fail. Keys keep the
    envelope's order (the contract's), not sorted.
    """
    try:
        text = _TEXT_ENCODER.encode(env)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _ASCII_TEXT_ENCODER.encode(env)


# --- validation -------------------------------------------------------------------


def _check_keys(label: str, keys: set[Any], wanted: frozenset[str], problems: list[str]) -> None:
    if keys != wanted:
        missing, extra = sorted(wanted - keys), sorted(map(str, keys - wanted))
        problems.append(f"{label}: missing {missing}, extra {extra}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _check_resource_object(name: str, value: Any, subject: Any, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append(f"data.{name} is not an object")
        return
    if not _is_text(value.get("type")):
        problems.append(f"data.{name}.type is not a string")
    if value.get("id") != subject:
        problems.append(f"data.{name}.id is not the subject")
    if not isinstance(value.get("attributes", {}), Mapping):
        problems.append(f"data.{name}.attributes is not an object")
    rels = value.get("relationships", {})
    if not isinstance(rels, Mapping) or not all(isinstance(r, Mapping) for r in rels.values()):
        problems.append(f"data.{name}.relationships is not an object of relationship objects")


def _check_change_data(
    env: Mapping[str, Any], op: str, data: Mapping[str, Any], problems: list[str]
) -> None:
    keys = set(data)
    _check_keys("data keys", keys, _CHANGE_DATA_KEYS, problems)
    subject = env.get("subject")
    if data.get("id") != subject:
        problems.append("data.id is not the subject")
    if not _is_text(data.get("resource")):
        problems.append("data.resource is not a string")
    elif _TYPE_RE.fullmatch(str(env.get("type"))) and event_type(data["resource"], op) != env.get(
        "type"
    ):
        problems.append("type does not name the singular of data.resource")
    if not (
        isinstance(data.get("detected_at"), str) and _RFC3339_RE.fullmatch(data["detected_at"])
    ):
        problems.append("data.detected_at is not an RFC 3339 timestamp")
    before, after = data.get("before"), data.get("after")
    want_before = op in ("updated", "deleted")
    want_after = op in ("created", "updated", "snapshot")
    for name, value, wanted in (("before", before, want_before), ("after", after, want_after)):
        if wanted:
            _check_resource_object(name, value, subject, problems)
        elif value is not None:
            problems.append(f"data.{name} must be null for a {op} event")
    _check_changes(op, data.get("changes"), problems)


def _check_changes(op: str, changes: Any, problems: list[str]) -> None:
    if not isinstance(changes, Mapping):
        problems.append("data.changes is not an object")
        return
    if op == "updated":
        if not changes:
            problems.append("data.changes is empty for an updated event")
    elif changes:
        problems.append(f"data.changes must be {{}} for a {op} event")
    for key, change in changes.items():
        if not isinstance(key, str):
            problems.append("data.changes has a key that is not a string")
        elif not isinstance(change, Mapping) or set(change) != {"from", "to"}:
            problems.append(f"data.changes[{key!r}] is not {{from, to}}")


def _check_schema_data(
    env: Mapping[str, Any], data: Mapping[str, Any], problems: list[str]
) -> None:
    keys = set(data)
    _check_keys("data keys", keys, _SCHEMA_DATA_KEYS, problems)
    if not _is_text(data.get("resource")):
        problems.append("data.resource is not a string")
    elif env.get("subject") != data["resource"]:
        problems.append("subject is not data.resource for a schema event")
    names = []
    for name in ("added", "removed"):
        value = data.get(name)
        if not isinstance(value, list) or not all(_is_text(v) for v in value):
            problems.append(f"data.{name} is not a list of names")
        else:
            names.extend(value)
    if not names and not any("data." in p for p in problems):
        problems.append("schema event names no attribute")


def validate_envelope(env: Mapping[str, Any]) -> None:
    """Check an envelope against CONTRACT.md; raise ``ValueError`` listing every problem.

    Checks the CloudEvents attributes (present, typed, nothing else), the type
    names, that ``source``/``orgid``/``subject`` agree with ``data``, the
    ``data`` keys of change and schema events, ``before``/``after`` presence
    per type, ``changes`` (``{}`` for created/deleted/snapshot, non-empty
    ``{from, to}`` entries for updated), RFC 3339 times, and that the whole
    envelope is strict JSON.
    """
    if not isinstance(env, Mapping):
        raise ValueError("envelope is not an object")
    problems: list[str] = []
    _check_attributes(env, problems)
    _check_data(env, problems)
    try:
        json.dumps(env, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"not strict JSON: {exc}")
    if problems:
        raise ValueError("invalid envelope: " + "; ".join(problems))


def _check_attributes(env: Mapping[str, Any], problems: list[str]) -> None:
    """The CloudEvents attributes other than ``type`` and ``data``."""
    app = env.get(APP_ATTRIBUTE)
    wanted = _ENVELOPE_KEYS | {APP_ATTRIBUTE} if APP_ATTRIBUTE in env else _ENVELOPE_KEYS
    _check_keys("attributes", set(env), wanted, problems)
    if APP_ATTRIBUTE in env and not _is_text(app):
        problems.append(f"{APP_ATTRIBUTE} is not a non-empty string")
    if env.get("specversion") != SPECVERSION:
        problems.append("specversion is not '1.0'")
    for name in ("id", "source", "subject", "orgid"):
        if not _is_text(env.get(name)):
            problems.append(f"{name} is not a non-empty string")
    if env.get("datacontenttype") != "application/json":
        problems.append("datacontenttype is not application/json")
    time = env.get("time")
    if not (isinstance(time, str) and _RFC3339_RE.fullmatch(time) and parse_timestamp(time)):
        problems.append("time is not an RFC 3339 timestamp")


def _check_data(env: Mapping[str, Any], problems: list[str]) -> None:
    """``data`` against ``orgid``/``source`` and the shape its ``type`` calls for."""
    data = env.get("data")
    if not isinstance(data, Mapping):
        problems.append("data is not an object")
        return
    org = env.get("orgid")
    if data.get("org_id") != org:
        problems.append("data.org_id is not orgid")
    app = env.get(APP_ATTRIBUTE)
    if env.get("source") != source(str(org), str(data.get("resource")), app and str(app)):
        problems.append(
            "source is not /apps/<etapp>/orgs/<orgid>/<data.resource>"
            if app
            else "source is not /orgs/<orgid>/<data.resource>"
        )
    etype = env.get("type")
    match = _TYPE_RE.fullmatch(etype) if isinstance(etype, str) else None
    if etype == SCHEMA_CHANGED:
        _check_schema_data(env, data, problems)
    elif match is not None:
        _check_change_data(env, match.group(2), data, problems)
    else:
        problems.append(f"type {etype!r} is not an etbridge event type")
