"""Property tests of the diff core: odd input never crashes it, and its answers are consistent."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from etbridge.changes import (
    REL_PREFIX,
    Change,
    MalformedRecord,
    Stored,
    attribute_changes,
    canonical,
    canonical_json,
    diff_records,
    fingerprint,
    schema_drift,
)
from etbridge.digest import DIGEST_SIZE, record_digest
from etbridge.events import envelope, event_id, parse_timestamp, rfc3339, to_json, validate_envelope

# No example database: tests must not leave files in the tree; no deadline: the
# CI machine is shared and loaded.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
IGNORE = frozenset({"updated_at"})
DETECTED = datetime(2026, 11, 27, 20, 5, tzinfo=UTC)

# Text with every kind of odd code point: combining marks, RTL, emoji, NUL,
# lone surrogates (a JSON "\ud800" escape decodes to one), and huge strings.
odd_text = st.one_of(
    st.text(max_size=40),
    # One lone surrogate inside text: what json.loads makes of a "\\ud800" escape
    # (it joins an escaped pair into one code point, so pairs never reach us).
    st.tuples(
        st.text(max_size=3),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.text(max_size=3),
    ).map("".join),
    st.sampled_from(["", "\x00", "\u202e\u0301", "💥👩‍👩‍👧", "日本語テキスト", "a" * 10_000]),
    st.integers(min_value=1, max_value=200_000).map(lambda n: "é" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(st.sampled_from(["status", "name", "updated_at", "notes", "vip"]), odd_text)
identifiers = st.fixed_dictionaries({"type": st.sampled_from(["users", "rooms"]), "id": odd_text})
linkage = st.one_of(st.none(), identifiers, st.lists(identifiers, max_size=4))
relationships = st.dictionaries(
    st.sampled_from(["owner", "account", "contact", "rooms", "x"]),
    st.one_of(
        st.fixed_dictionaries({"data": linkage}),
        st.just({"links": {"related": "/x"}}),
    ),
    max_size=4,
)
timestamps = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    odd_text,
)


@st.composite
def resources(draw: st.DrawFn, rid: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"type": "bookings", "id": rid or draw(odd_text.filter(bool))}
    if draw(st.booleans()):
        attrs = draw(st.dictionaries(names, json_values, max_size=6))
        if draw(st.booleans()):
            attrs["updated_at"] = draw(timestamps)
        res["attributes"] = attrs
    elif draw(st.booleans()):
        res["attributes"] = None
    if draw(st.booleans()):
        res["relationships"] = draw(relationships)
    if draw(st.booleans()):
        res["links"] = {"self": "/v2/bookings/x"}
    return res


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """Another version of the same record: some attributes and links changed."""
    out: dict[str, Any] = json.loads(json.dumps(base))
    attrs = out.setdefault("attributes", {}) or {}
    out["attributes"] = attrs
    for name in draw(st.lists(names, max_size=3)):
        action = draw(st.sampled_from(["set", "null", "drop"]))
        if action == "set":
            attrs[name] = draw(json_values)
        elif action == "null":
            attrs[name] = None
        else:
            attrs.pop(name, None)
    if draw(st.booleans()):
        out["relationships"] = draw(relationships)
    return out


def shuffled(value: Any, rnd: random.Random) -> Any:
    """The same JSON value with every object's key order shuffled."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def roundtrip(value: Any) -> Any:
    """A fresh copy, as another worker would parse it."""
    return json.loads(canonical_json(value))


@FUZZ
@given(st.one_of(json_values, resources(), st.dictionaries(st.text(max_size=5), json_values)))
def test_canonical_only_raises_malformed_record(raw: Any) -> None:
    try:
        canon = canonical(raw)
    except MalformedRecord:
        return
    assert canonical(canon) == canon
    assert isinstance(record_digest(canon), bytes) and len(record_digest(canon)) == DIGEST_SIZE
    assert isinstance(fingerprint(canon, IGNORE), str)
    assert json.loads(canonical_json(canon)) == canon


@FUZZ
@given(resources(), st.randoms(use_true_random=False))
def test_key_order_never_matters(raw: dict[str, Any], rnd: random.Random) -> None:
    canon = canonical(raw)
    other = canonical(shuffled(raw, rnd))
    assert canonical_json(canon) == canonical_json(other)
    # (record_digest hashes the bytes as they come, key order included: a reordered
    # record costs one diff, and the diff goes by the fingerprint, which ignores order.)
    assert fingerprint(canon, IGNORE) == fingerprint(other, IGNORE)
    change = Change("created", "bookings", canon["id"], None, canon, {})
    twin = Change("created", "bookings", other["id"], None, other, {})
    assert event_id("1001", change, IGNORE) == event_id("1001", twin, IGNORE)


@FUZZ
@given(resources())
def test_diff_of_a_record_with_itself_is_empty(raw: dict[str, Any]) -> None:
    canon = canonical(raw)
    assert attribute_changes(canon, canon, IGNORE) == {}
    copy_ = roundtrip(canon)
    assert attribute_changes(canon, copy_, ()) == {}
    result = diff_records(
        "bookings", {canon["id"]: Stored(fingerprint(canon, IGNORE), canon)}, [copy_], IGNORE
    )
    assert result.changes == [] and result.writes == {}


@FUZZ
@given(st.data())
def test_diff_is_symmetric_and_consistent_with_fingerprints(data: st.DataObject) -> None:
    a = canonical(data.draw(resources(rid="7")))
    b = canonical(data.draw(mutated(a)))
    absorb = data.draw(st.sets(names, max_size=2))
    fwd = attribute_changes(a, b, IGNORE, absorb)
    back = attribute_changes(b, a, IGNORE, absorb)
    assert back == {k: {"from": v["to"], "to": v["from"]} for k, v in fwd.items()}
    assert all(k not in IGNORE for k in fwd)
    if fingerprint(a, IGNORE) == fingerprint(b, IGNORE):
        assert fwd == {}  # equal fingerprints never hide... nor invent a change
    if not absorb:
        assert (fwd == {}) == (fingerprint(a, IGNORE) == fingerprint(b, IGNORE))
    for key, change in fwd.items():
        assert not (change["from"] is None and change["to"] is None)
        if key.startswith(REL_PREFIX):
            continue
        assert key in a["attributes"] or key in b["attributes"]


@FUZZ
@given(st.data())
def test_page_diff_never_crashes_and_events_validate(data: st.DataObject) -> None:
    stored_raw = data.draw(st.lists(resources(), max_size=5, unique_by=lambda r: r["id"]))
    stored_recs = [canonical(r) for r in stored_raw]
    page = [canonical(data.draw(mutated(r))) for r in stored_recs if data.draw(st.booleans())]
    page += [
        canonical(r)
        for r in data.draw(st.lists(resources(), max_size=3))
        if r["id"] not in {p["id"] for p in page} | {s["id"] for s in stored_recs}
    ]
    assume(len({p["id"] for p in page}) == len(page))
    stored = {r["id"]: Stored(fingerprint(r, IGNORE), r) for r in stored_recs}
    result = diff_records("bookings", stored, page, IGNORE, absorb=data.draw(st.sets(names)))
    assert {c.id for c in result.changes} <= set(result.writes)
    for change in result.changes:
        assert change.op in ("created", "updated")
        env = envelope("1001", change, detected_at=DETECTED, ignore_fields=IGNORE)
        validate_envelope(json.loads(to_json(env)))
        again = envelope(
            "1001",
            Change(
                change.op,
                change.resource,
                change.id,
                roundtrip(change.before) if change.before is not None else None,
                roundtrip(change.after),
                change.changes,
            ),
            detected_at=DETECTED,
            ignore_fields=IGNORE,
        )
        assert again["id"] == env["id"]
    # Applying the writes and diffing the same page again finds nothing.
    stored.update(result.writes)
    assert diff_records("bookings", stored, page, IGNORE).changes == []
    drift = schema_drift("bookings", {"status"}, page)
    assert drift is None or set(drift.added) | set(drift.removed)


@FUZZ
@given(st.lists(resources(), min_size=1, max_size=4), st.integers(min_value=0, max_value=3))
def test_duplicate_ids_in_a_page_are_malformed(raws: list[dict[str, Any]], at: int) -> None:
    page = [canonical(r) for r in raws]
    dup = dict(page[at % len(page)])
    page.insert(min(at, len(page)), dup)
    with pytest.raises(MalformedRecord):
        diff_records("bookings", {}, page, IGNORE)


@FUZZ
@given(st.one_of(odd_text, json_values, st.datetimes()))
def test_timestamps_never_crash(value: Any) -> None:
    parsed = parse_timestamp(value)
    if parsed is not None:
        assert parsed.tzinfo is UTC
        assert parse_timestamp(rfc3339(parsed)) == parsed


@FUZZ
@given(
    st.datetimes(
        timezones=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
            lambda m: timezone(timedelta(minutes=m))
        )
    )
)
def test_timestamps_roundtrip_with_any_offset(dt: datetime) -> None:
    text = dt.isoformat()
    parsed = parse_timestamp(text)
    if parsed is None:  # only at the very edges of the datetime range
        with pytest.raises((OverflowError, ValueError)):
            dt.astimezone(UTC)
        return
    assert parsed == dt
