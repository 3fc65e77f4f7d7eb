"""Unit tests of the pure diff core (etbridge/changes.py): no Redis, no HTTP."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from etbridge import changes
from etbridge.changes import (
    Change,
    MalformedRecord,
    SchemaChange,
    Stored,
    attribute_changes,
    canonical,
    canonical_json,
    deletions,
    diff_records,
    fingerprint,
    page_fields,
    schema_drift,
)
from etbridge.digest import record_digest
from etbridge.errors import MalformedResponse

IGNORE = frozenset({"updated_at"})


def booking(rid: str = "1", **attrs: Any) -> dict[str, Any]:
    """A raw JSON:API booking like the sandbox serves."""
    base: dict[str, Any] = {
        "name": "Müller wedding \u2013 Ballroom",
        "status": "tentative",
        "start_date": "2026-12-01",
        "end_date": "2026-12-02",
        "guest_count": 120,
        "total_amount": "15400.00",
        "currency": "EUR",
        "notes": "Café crème — 日本語",
        "stage_id": 4,
        "referral_source_id": None,
        "created_at": "2026-11-01T10:00:00Z",
        "updated_at": "2026-11-27T20:04:03Z",
    }
    base.update(attrs)
    return {
        "type": "bookings",
        "id": rid,
        "attributes": base,
        "relationships": {
            "account": {"data": {"type": "accounts", "id": "77"}},
            "contact": {"data": None},
            "owner": {"data": {"type": "users", "id": "5"}},
        },
        "links": {"self": f"https://api.example/v2/bookings/{rid}"},
    }


def canon(rid: str = "1", **attrs: Any) -> dict[str, Any]:
    return canonical(booking(rid, **attrs))


def store(*records: dict[str, Any]) -> dict[str, Stored | None]:
    return {r["id"]: Stored(fingerprint(r, IGNORE), r) for r in records}


# --- canonical form --------------------------------------------------------------


def test_canonical_shape_drops_links_and_keeps_linkage() -> None:
    c = canon("9")
    assert set(c) == {"type", "id", "attributes", "relationships"}
    assert c["relationships"] == {
        "account": {"data": {"type": "accounts", "id": "77"}},
        "contact": {"data": None},
        "owner": {"data": {"type": "users", "id": "5"}},
    }
    assert canonical(c) == c  # idempotent: the canonical form is a resource object


def test_canonical_missing_or_null_members() -> None:
    assert canonical({"type": "bookings", "id": "1"}) == {
        "type": "bookings",
        "id": "1",
        "attributes": {},
        "relationships": {},
    }
    c = canonical({"type": "bookings", "id": "1", "attributes": None, "relationships": None})
    assert c["attributes"] == {} and c["relationships"] == {}


def test_canonical_links_only_relationship_is_left_out() -> None:
    raw = booking()
    raw["relationships"]["events"] = {"links": {"related": "/v2/bookings/1/events"}}
    assert "events" not in canonical(raw)["relationships"]


def test_canonical_to_many_sorted_and_identifier_meta_dropped() -> None:
    raw = booking()
    raw["relationships"]["rooms"] = {
        "data": [
            {"type": "rooms", "id": "3", "meta": {"x": 1}},
            {"type": "rooms", "id": "10"},
            {"type": "halls", "id": "9"},
        ]
    }
    assert canonical(raw)["relationships"]["rooms"]["data"] == [
        {"type": "halls", "id": "9"},
        {"type": "rooms", "id": "10"},
        {"type": "rooms", "id": "3"},
    ]


def test_canonical_json_is_key_order_independent() -> None:
    a = canon()
    b = json.loads(json.dumps(a))
    b["attributes"] = dict(reversed(list(b["attributes"].items())))
    b = dict(reversed(list(b.items())))
    assert canonical_json(a) == canonical_json(canonical(b))
    text = canonical_json(a).decode()
    assert "日本語" in text  # ensure_ascii=False: compact for non-ASCII text
    assert ', "' not in text and '": ' not in text  # compact separators


def test_canonical_json_survives_lone_surrogate() -> None:
    c = canon(notes="bad \ud800 text")
    raw = canonical_json(c)
    assert json.loads(raw) == c


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "bookings",
        {"type": "bookings"},
        {"type": "bookings", "id": 7},
        {"type": "bookings", "id": ""},
        {"id": "1"},
        {"type": "bookings", "id": "1", "attributes": []},
        {"type": "bookings", "id": "1", "attributes": {1: "x"}},
        {"type": "bookings", "id": "1", "relationships": []},
        {"type": "bookings", "id": "1", "relationships": {"owner": None}},
        {"type": "bookings", "id": "1", "relationships": {"owner": {"data": "5"}}},
        {"type": "bookings", "id": "1", "relationships": {"owner": {"data": {"id": "5"}}}},
        {"type": "bookings", "id": "1", "relationships": {"rooms": {"data": [{"type": "r"}]}}},
    ],
)
def test_canonical_rejects_malformed(raw: Any) -> None:
    with pytest.raises(MalformedRecord) as info:
        canonical(raw)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MalformedResponse)  # retriable for the poller


# --- fingerprints -----------------------------------------------------------------


def test_fingerprint_ignores_ignored_fields_and_null_vs_absent() -> None:
    a = canon(updated_at="2026-11-27T20:04:03Z")
    b = canon(updated_at="2026-11-28T09:00:00Z")
    assert fingerprint(a, IGNORE) == fingerprint(b, IGNORE)
    assert fingerprint(a, ()) != fingerprint(b, ())
    c = copy.deepcopy(a)
    del c["attributes"]["referral_source_id"]  # was null
    del c["relationships"]["contact"]  # was null linkage
    assert fingerprint(a, IGNORE) == fingerprint(c, IGNORE)
    assert record_digest(a) != record_digest(c)  # the exact digest sees it
    d = canon(status="definite")
    assert fingerprint(a, IGNORE) != fingerprint(d, IGNORE)


def test_fingerprint_ignores_relationship_by_prefixed_name() -> None:
    a = canon()
    b = copy.deepcopy(a)
    b["relationships"]["owner"] = {"data": {"type": "users", "id": "6"}}
    assert fingerprint(a, IGNORE) != fingerprint(b, IGNORE)
    assert fingerprint(a, IGNORE | {"relationships.owner"}) == fingerprint(
        b, IGNORE | {"relationships.owner"}
    )
    assert attribute_changes(a, b, IGNORE | {"relationships.owner"}) == {}


# --- attribute_changes ---------------------------------------------------------------


def test_strict_values_true_one_and_float_differ() -> None:
    a, b, c = canon(flag=1), canon(flag=True), canon(flag=1.0)
    assert attribute_changes(a, b, IGNORE) == {"flag": {"from": 1, "to": True}}
    assert attribute_changes(a, c, IGNORE) == {"flag": {"from": 1, "to": 1.0}}
    nested_a, nested_b = canon(extra={"x": [1, {"y": None}]}), canon(extra={"x": [1, {"y": 0}]})
    assert list(attribute_changes(nested_a, nested_b, IGNORE)) == ["extra"]
    assert attribute_changes(nested_a, copy.deepcopy(nested_a), IGNORE) == {}


def test_attribute_changes_sorted_and_symmetric() -> None:
    a = canon(status="lead", guest_count=10)
    b = canon(status="definite", guest_count=12, notes=None)
    fwd = attribute_changes(a, b, IGNORE)
    back = attribute_changes(b, a, IGNORE)
    assert list(fwd) == ["guest_count", "notes", "status"]
    assert back == {k: {"from": v["to"], "to": v["from"]} for k, v in fwd.items()}


# --- diff_records -------------------------------------------------------------------


def test_created() -> None:
    rec = canon("5")
    result = diff_records("bookings", {}, [rec], IGNORE)
    assert result.changes == [Change("created", "bookings", "5", None, rec, {})]
    assert result.writes == {"5": Stored(fingerprint(rec, IGNORE), rec)}


def test_baseline_silent_or_snapshot() -> None:
    recs = [canon("1"), canon("2")]
    silent = diff_records("bookings", {}, recs, IGNORE, baseline=True)
    assert silent.changes == [] and set(silent.writes) == {"1", "2"}
    loud = diff_records("bookings", {}, recs, IGNORE, baseline=True, emit_baseline=True)
    assert [(c.op, c.id, c.before, c.changes) for c in loud.changes] == [
        ("snapshot", "1", None, {}),
        ("snapshot", "2", None, {}),
    ]
    assert set(loud.writes) == {"1", "2"}


def test_baseline_still_reports_updates_of_stored_records() -> None:
    # A resumed baseline sweep meets records it already stored.
    old = canon("1", status="lead")
    new = canon("1", status="lost")
    result = diff_records("bookings", store(old), [new], IGNORE, baseline=True)
    assert [c.op for c in result.changes] == ["updated"]


def test_unchanged_page_emits_and_writes_nothing() -> None:
    recs = [canon(str(i)) for i in range(100)]
    stored = store(*copy.deepcopy(recs))
    result = diff_records("bookings", stored, recs, IGNORE)
    assert result.changes == [] and result.writes == {}


def test_touch_only_updated_at_writes_without_event() -> None:
    old = canon("1")
    new = canon("1", updated_at="2026-11-28T08:00:00Z")
    result = diff_records("bookings", store(old), [new], IGNORE)
    assert result.changes == []
    assert result.writes == {"1": Stored(fingerprint(new, IGNORE), new)}


def test_null_versus_absent_writes_without_event() -> None:
    old = canon("1")
    new = copy.deepcopy(old)
    del new["attributes"]["referral_source_id"]
    del new["relationships"]["contact"]
    result = diff_records("bookings", store(old), [new], IGNORE)
    assert result.changes == [] and list(result.writes) == ["1"]


def test_update_one_attribute() -> None:
    old = canon("1", status="tentative")
    new = canon("1", status="definite", updated_at="2026-11-28T08:00:00Z")
    result = diff_records("bookings", store(old), [new], IGNORE)
    assert result.changes == [
        Change(
            "updated",
            "bookings",
            "1",
            old,
            new,
            {"status": {"from": "tentative", "to": "definite"}},
        )
    ]
    assert result.writes["1"].record is new


def test_update_several_attributes() -> None:
    old = canon("1")
    new = canon(
        "1", status="definite", guest_count=150, notes="", updated_at="2026-11-29T00:00:00Z"
    )
    (change,) = diff_records("bookings", store(old), [new], IGNORE).changes
    assert change.changes == {
        "guest_count": {"from": 120, "to": 150},
        "notes": {"from": "Café crème — 日本語", "to": ""},
        "status": {"from": "tentative", "to": "definite"},
    }


def test_update_with_ignore_fields_empty_reports_updated_at() -> None:
    old, new = canon("1"), canon("1", updated_at="2026-11-28T08:00:00Z")
    (change,) = diff_records("bookings", store(old), [new], ()).changes
    assert list(change.changes) == ["updated_at"]


def test_relationship_to_one_change_and_null_linkage() -> None:
    old = canon("1")
    new = copy.deepcopy(old)
    new["relationships"]["owner"] = {"data": {"type": "users", "id": "6"}}
    new["relationships"]["contact"] = {"data": {"type": "contacts", "id": "3"}}
    new["relationships"]["account"] = {"data": None}
    (change,) = diff_records("bookings", store(old), [new], IGNORE).changes
    assert change.changes == {
        "relationships.account": {"from": {"type": "accounts", "id": "77"}, "to": None},
        "relationships.contact": {"from": None, "to": {"type": "contacts", "id": "3"}},
        "relationships.owner": {
            "from": {"type": "users", "id": "5"},
            "to": {"type": "users", "id": "6"},
        },
    }


def test_relationship_to_many_changes_but_not_its_order() -> None:
    raw_old, raw_new, raw_same = booking(), booking(), booking()
    raw_old["relationships"]["rooms"] = {"data": [{"type": "rooms", "id": "1"}]}
    raw_new["relationships"]["rooms"] = {
        "data": [{"type": "rooms", "id": "2"}, {"type": "rooms", "id": "1"}]
    }
    raw_same["relationships"]["rooms"] = {
        "data": [{"type": "rooms", "id": "1"}, {"type": "rooms", "id": "2"}]
    }
    old = canonical(raw_old)
    (change,) = diff_records("bookings", store(old), [canonical(raw_new)], IGNORE).changes
    assert change.changes == {
        "relationships.rooms": {
            "from": [{"type": "rooms", "id": "1"}],
            "to": [{"type": "rooms", "id": "1"}, {"type": "rooms", "id": "2"}],
        }
    }
    reordered = diff_records("bookings", store(canonical(raw_same)), [canonical(raw_new)], IGNORE)
    assert reordered.changes == [] and reordered.writes == {}


def test_relationship_absent_versus_null_is_no_change_but_empty_list_is() -> None:
    old = canon("1")
    new = copy.deepcopy(old)
    del new["relationships"]["contact"]
    assert attribute_changes(old, new, IGNORE) == {}
    new["relationships"]["rooms"] = {"data": []}
    assert attribute_changes(old, new, IGNORE) == {"relationships.rooms": {"from": None, "to": []}}


def test_mixed_page() -> None:
    a, b, c = canon("1"), canon("2"), canon("3")
    stored = store(a, b, c)
    page = [
        canon("1"),  # unchanged
        canon("2", updated_at="2026-11-30T00:00:00Z"),  # touched
        canon("3", status="lost"),  # updated
        canon("4"),  # created
    ]
    result = diff_records("bookings", stored, page, IGNORE)
    assert [(ch.op, ch.id) for ch in result.changes] == [("updated", "3"), ("created", "4")]
    assert set(result.writes) == {"2", "3", "4"}


def test_stored_fingerprint_from_another_ignore_list_is_harmless() -> None:
    old = canon("1")
    stale = {"1": Stored(fingerprint(old, ()), old)}
    touched = canon("1", updated_at="2026-11-30T00:00:00Z")
    result = diff_records("bookings", stale, [touched], IGNORE)
    assert result.changes == [] and list(result.writes) == ["1"]


def test_duplicate_id_in_page_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match="twice"):
        diff_records("bookings", {}, [canon("1"), canon("2"), canon("1")], IGNORE)
    with pytest.raises(MalformedRecord):
        diff_records("bookings", {}, [{"type": "bookings", "attributes": {}}], IGNORE)


def test_stored_mapping_may_hold_none() -> None:
    rec = canon("1")
    result = diff_records("bookings", {"1": None}, [rec], IGNORE)
    assert [c.op for c in result.changes] == ["created"]


# --- deletions ----------------------------------------------------------------------


def test_deletions() -> None:
    a, b, c = canon("1"), canon("2"), canon("3")
    gone = deletions("bookings", store(a, b, c), {"2"})
    assert gone == [
        Change("deleted", "bookings", "1", a, None, {}),
        Change("deleted", "bookings", "3", c, None, {}),
    ]
    assert deletions("bookings", store(a), ["1"]) == []
    assert deletions("bookings", {"9": None}, ()) == []


# --- schema drift ------------------------------------------------------------------------


def test_schema_drift_baseline_and_empty_page() -> None:
    page = [canon("1")]
    assert schema_drift("bookings", set(), page) is None
    assert schema_drift("bookings", page_fields(page), []) is None
    assert schema_drift("bookings", page_fields(page), page) is None


def test_schema_drift_added_and_removed() -> None:
    known = page_fields([canon("1")])
    added_page = [canon("1", vip=True), canon("2", vip=None)]
    assert schema_drift("bookings", known, added_page) == SchemaChange("bookings", ("vip",), ())
    removed_page = [copy.deepcopy(canon("1")), copy.deepcopy(canon("2"))]
    for rec in removed_page:
        del rec["attributes"]["notes"]
    assert schema_drift("bookings", known, removed_page) == SchemaChange("bookings", (), ("notes",))


def test_schema_drift_removed_needs_absence_from_whole_page() -> None:
    known = page_fields([canon("1")])
    lacking = copy.deepcopy(canon("2"))
    del lacking["attributes"]["notes"]
    assert schema_drift("bookings", known, [canon("1"), lacking]) is None


def test_schema_drift_relationships_opt_in() -> None:
    recs = [canon("1")]
    known = page_fields(recs)
    raw = booking("2")
    raw["relationships"]["venue"] = {"data": {"type": "venues", "id": "1"}}
    page = [canonical(raw)]
    assert schema_drift("bookings", known, page) is None
    known_r = page_fields(recs, relationships=True)
    assert "relationships.owner" in known_r
    assert schema_drift("bookings", known_r, page, relationships=True) == SchemaChange(
        "bookings", ("relationships.venue",), ()
    )
    # Names of relationships in `known` are not "removed" when not watched.
    assert schema_drift("bookings", known_r, [canon("1")]) is None


def test_absorb_hides_appearance_and_disappearance_only() -> None:
    old = canon("1")
    new = canon("1", vip="gold")
    assert attribute_changes(old, new, IGNORE) == {"vip": {"from": None, "to": "gold"}}
    assert attribute_changes(old, new, IGNORE, {"vip"}) == {}
    assert attribute_changes(new, old, IGNORE, {"vip"}) == {}
    # A value change of an absorbed name present on both sides still counts.
    assert attribute_changes(new, canon("1", vip="silver"), IGNORE, {"vip"}) == {
        "vip": {"from": "gold", "to": "silver"}
    }


def test_module_exports() -> None:
    for name in changes.__all__:
        assert hasattr(changes, name)
