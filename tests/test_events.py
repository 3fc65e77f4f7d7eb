"""Unit tests of the CloudEvents envelopes and stable ids (etbridge/events.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from etbridge import events
from etbridge.changes import (
    Change,
    SchemaChange,
    Stored,
    canonical,
    deletions,
    diff_records,
    fingerprint,
)
from etbridge.events import (
    envelope,
    event_id,
    event_type,
    parse_timestamp,
    rfc3339,
    schema_envelope,
    validate_envelope,
)

IGNORE = frozenset({"updated_at"})
ORG = "1001"
DETECTED = datetime(2026, 11, 27, 20, 5, 0, tzinfo=UTC)


def rec(rid: str = "42", **attrs: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Gala \u2013 日本",
        "status": "tentative",
        "guest_count": 80,
        "updated_at": "2026-11-27T20:04:03Z",
    }
    base.update(attrs)
    return canonical(
        {
            "type": "bookings",
            "id": rid,
            "attributes": base,
            "relationships": {"owner": {"data": {"type": "users", "id": "5"}}},
        }
    )


def update(before: dict[str, Any], after: dict[str, Any]) -> Change:
    (change,) = diff_records(
        "bookings", {before["id"]: Stored(fingerprint(before, IGNORE), before)}, [after], IGNORE
    ).changes
    return change


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "noun"),
    [
        ("bookings", "booking"),
        ("accounts", "account"),
        ("contacts", "contact"),
        ("events", "event"),
        ("activities", "activity"),
        ("addresses", "address"),
        ("statuses", "status"),
        ("booking_statuses", "booking_status"),
        ("taxes", "tax"),
        ("branches", "branch"),
        ("people", "person"),
        ("event_types", "event_type"),
        ("invoices", "invoice"),
    ],
)
def test_event_type_singular(resource: str, noun: str) -> None:
    assert event_type(resource, "updated") == f"com.eventtemple.{noun}.updated"


def test_event_type_rejects_unknown_op() -> None:
    with pytest.raises(ValueError, match="unknown change op"):
        event_type("bookings", "changed")


# --- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T20:04:03Z", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-27t20:04:03z", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-27T21:04:03+01:00", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-27T15:34:03-0430", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-28T01:04:03+05", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-27 20:04:03", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-27T20:04:03.5Z", datetime(2026, 11, 27, 20, 4, 3, 500000, tzinfo=UTC)),
        (
            "2026-11-27T20:04:03.123456789+00:00",
            datetime(2026, 11, 27, 20, 4, 3, 123456, tzinfo=UTC),
        ),
        ("2026-11-27T20:04Z", datetime(2026, 11, 27, 20, 4, tzinfo=UTC)),
        ("20261127T200403Z", datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)),
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),
        (
            datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        (datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: Any, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-11-27T25:00:00Z",
        "2026-11-27T20:04:03+25:00",
        "0001-01-01T00:00:00+01:00",
        "\uff12\uff10\uff12\uff16-11-27T20:04:03Z",  # fullwidth digits
        1764273843,
        True,
        ["2026-11-27T20:04:03Z"],
    ],
)
def test_parse_timestamp_garbage_is_none(garbage: Any) -> None:
    assert parse_timestamp(garbage) is None


def test_rfc3339() -> None:
    assert rfc3339(datetime(2026, 11, 27, 20, 4, 3, tzinfo=UTC)) == "2026-11-27T20:04:03Z"
    assert rfc3339(datetime(2026, 11, 27, 20, 4, 3, 120, tzinfo=UTC)) == (
        "2026-11-27T20:04:03.000120Z"
    )
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 11, 27, 22, 4, 3, tzinfo=plus_two)) == "2026-11-27T20:04:03Z"
    assert rfc3339(datetime(2026, 11, 27, 20, 4, 3)) == "2026-11-27T20:04:03Z"
    assert rfc3339(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00Z"
    for text in ("2026-11-27T20:04:03Z", "2026-11-27T20:04:03.5Z"):
        parsed = parse_timestamp(text)
        assert parsed is not None and parse_timestamp(rfc3339(parsed)) == parsed


# --- stable ids --------------------------------------------------------------------------


def test_same_change_detected_twice_gets_same_id() -> None:
    a = rec(status="tentative")
    b = rec(status="definite", updated_at="2026-11-27T21:00:00Z")
    first = envelope(ORG, update(a, b), detected_at=DETECTED, ignore_fields=IGNORE)
    # Another worker, later, from freshly parsed copies with another key order.
    a2 = json.loads(json.dumps(a))
    b2 = json.loads(json.dumps(b))
    b2["attributes"] = dict(reversed(list(b2["attributes"].items())))
    second = envelope(
        ORG,
        update(a2, b2),
        detected_at=DETECTED + timedelta(minutes=3),
        ignore_fields=IGNORE,
    )
    assert first["id"] == second["id"]
    assert {k: v for k, v in first.items() if k != "data"} == {
        k: v for k, v in second.items() if k != "data"
    }
    assert first["data"]["detected_at"] != second["data"]["detected_at"]


def test_timestamp_spelling_does_not_change_the_id() -> None:
    a = rec()
    b = rec(status="definite", updated_at="2026-11-27T21:00:00Z")
    b_offset = rec(status="definite", updated_at="2026-11-27T22:00:00+01:00")
    assert event_id(ORG, update(a, b), IGNORE) == event_id(ORG, update(a, b_offset), IGNORE)


def test_flip_flop_gets_new_id_for_second_transition() -> None:
    a1 = rec(status="tentative", updated_at="2026-11-27T20:00:00Z")
    b1 = rec(status="definite", updated_at="2026-11-27T20:01:00Z")
    a2 = rec(status="tentative", updated_at="2026-11-27T20:02:00Z")
    b2 = rec(status="definite", updated_at="2026-11-27T20:03:00Z")
    ids = [event_id(ORG, update(x, y), IGNORE) for x, y in ((a1, b1), (b1, a2), (a2, b2))]
    assert len(set(ids)) == 3


def test_id_depends_on_org_resource_record_and_type() -> None:
    a = rec("1")
    b = rec("1", status="lost", updated_at="2026-11-28T00:00:00Z")
    change = update(a, b)
    base = event_id(ORG, change, IGNORE)
    assert event_id("1002", change, IGNORE) != base
    other_resource = Change("updated", "events", "1", a, b, change.changes)
    assert event_id(ORG, other_resource, IGNORE) != base
    created = Change("created", "bookings", "1", None, b, {})
    snapshot = Change("snapshot", "bookings", "1", None, b, {})
    assert len({base, event_id(ORG, created, IGNORE), event_id(ORG, snapshot, IGNORE)}) == 3
    other_id = update(rec("2"), rec("2", status="lost", updated_at="2026-11-28T00:00:00Z"))
    assert event_id(ORG, other_id, IGNORE) != base


def test_deletion_id_uses_before_updated_at() -> None:
    a = rec("1", updated_at="2026-11-27T20:00:00Z")
    stored = {"1": Stored(fingerprint(a, IGNORE), a)}
    (gone,) = deletions("bookings", stored, ())
    env1 = envelope(ORG, gone, detected_at=DETECTED, ignore_fields=IGNORE)
    env2 = envelope(ORG, gone, detected_at=DETECTED + timedelta(hours=1), ignore_fields=IGNORE)
    assert env1["id"] == env2["id"]
    assert env1["time"] == rfc3339(DETECTED) and env2["time"] != env1["time"]
    # Deleted, recreated, edited and deleted again: a new deletion id.
    a_later = rec("1", updated_at="2026-11-29T20:00:00Z")
    (gone_again,) = deletions("bookings", {"1": Stored(fingerprint(a_later, IGNORE), a_later)}, ())
    assert event_id(ORG, gone_again, IGNORE) != env1["id"]


def test_id_without_updated_at_still_stable() -> None:
    a = rec()
    del a["attributes"]["updated_at"]
    b = copy.deepcopy(a)
    b["attributes"]["status"] = "lost"
    assert event_id(ORG, update(a, b), IGNORE) == event_id(ORG, update(a, b), IGNORE)


# --- envelopes ---------------------------------------------------------------------------


def test_updated_envelope_exactly_per_contract() -> None:
    a = rec(status="tentative")
    b = rec(status="definite", updated_at="2026-11-27T22:04:03+01:00")
    env = envelope(ORG, update(a, b), detected_at=DETECTED, ignore_fields=IGNORE)
    assert env == {
        "specversion": "1.0",
        "id": env["id"],
        "source": "/orgs/1001/bookings",
        "type": "com.eventtemple.booking.updated",
        "subject": "42",
        "time": "2026-11-27T21:04:03Z",
        "datacontenttype": "application/json",
        "orgid": "1001",
        "data": {
            "org_id": "1001",
            "resource": "bookings",
            "id": "42",
            "before": a,
            "after": b,
            "changes": {"status": {"from": "tentative", "to": "definite"}},
            "detected_at": "2026-11-27T20:05:00Z",
        },
    }
    assert isinstance(env["id"], str) and len(env["id"]) == 32
    assert env["data"]["after"]["relationships"]["owner"] == {"data": {"type": "users", "id": "5"}}
    validate_envelope(env)
    validate_envelope(json.loads(events.to_json(env)))


def test_created_snapshot_deleted_envelopes_validate() -> None:
    b = rec()
    for op in ("created", "snapshot"):
        env = envelope(
            ORG,
            Change(op, "bookings", "42", None, b, {}),
            detected_at=DETECTED,
            ignore_fields=IGNORE,
        )
        assert env["type"] == f"com.eventtemple.booking.{op}"
        assert env["time"] == "2026-11-27T20:04:03Z"
        assert env["data"]["before"] is None and env["data"]["changes"] == {}
        validate_envelope(env)
    env = envelope(
        ORG,
        Change("deleted", "bookings", "42", b, None, {}),
        detected_at=DETECTED,
        ignore_fields=IGNORE,
    )
    assert env["time"] == "2026-11-27T20:05:00Z" and env["data"]["after"] is None
    validate_envelope(env)


def test_time_falls_back_to_detection_without_usable_updated_at() -> None:
    b = rec(updated_at="not a time")
    env = envelope(
        ORG,
        Change("created", "bookings", "42", None, b, {}),
        detected_at=DETECTED,
        ignore_fields=IGNORE,
    )
    assert env["time"] == rfc3339(DETECTED)
    validate_envelope(env)


def test_schema_envelope_per_contract() -> None:
    change = SchemaChange("bookings", ("vip",), ())
    env = schema_envelope(ORG, change, detected_at=DETECTED)
    assert env == {
        "specversion": "1.0",
        "id": env["id"],
        "source": "/orgs/1001/bookings",
        "type": "com.eventtemple.schema.changed",
        "subject": "bookings",
        "time": "2026-11-27T20:05:00Z",
        "datacontenttype": "application/json",
        "orgid": "1001",
        "data": {"org_id": "1001", "resource": "bookings", "added": ["vip"], "removed": []},
    }
    validate_envelope(env)
    again = schema_envelope(ORG, change, detected_at=DETECTED + timedelta(hours=1))
    assert again["id"] == env["id"]
    other = schema_envelope(ORG, SchemaChange("bookings", (), ("vip",)), detected_at=DETECTED)
    assert other["id"] != env["id"]
    assert schema_envelope("1002", change, detected_at=DETECTED)["id"] != env["id"]


def test_to_json_survives_lone_surrogate() -> None:
    b = rec(notes="x\udcffy")
    env = envelope(
        ORG,
        Change("created", "bookings", "42", None, b, {}),
        detected_at=DETECTED,
        ignore_fields=IGNORE,
    )
    text = events.to_json(env)
    text.encode("utf-8")
    assert json.loads(text) == env


# --- validation rejects what the contract forbids ---------------------------------------------


def _good() -> dict[str, Any]:
    a = rec(status="tentative")
    b = rec(status="definite", updated_at="2026-11-27T21:00:00Z")
    return envelope(ORG, update(a, b), detected_at=DETECTED, ignore_fields=IGNORE)


def _mutations() -> list[tuple[str, Any]]:
    def drop(key: str) -> Any:
        return lambda e: e.pop(key)

    def set_(key: str, value: Any) -> Any:
        return lambda e: e.__setitem__(key, value)

    def set_data(key: str, value: Any) -> Any:
        return lambda e: e["data"].__setitem__(key, value)

    return [
        ("specversion", set_("specversion", "0.3")),
        ("id", set_("id", "")),
        ("id", set_("id", 5)),
        ("attributes: missing", drop("time")),
        ("attributes: missing", drop("orgid")),
        ("extra", set_("Bad-Key", 1)),
        ("source", set_("source", "/orgs/9/bookings")),
        ("type", set_("type", "com.example.booking.updated")),
        ("singular", set_("type", "com.eventtemple.event.updated")),
        ("time", set_("time", "27/11/2026")),
        ("time", set_("time", "2026-11-27T20:04:03")),
        ("datacontenttype", set_("datacontenttype", "text/plain")),
        ("data is not an object", set_("data", "x")),
        ("data.org_id", set_data("org_id", "1002")),
        ("data.id", set_data("id", "43")),
        ("data keys", lambda e: e["data"].pop("changes")),
        ("data keys", set_data("extra", 1)),
        ("changes is empty", set_data("changes", {})),
        ("{from, to}", set_data("changes", {"status": {"to": "definite"}})),
        ("data.before", set_data("before", None)),
        ("data.after.id", lambda e: e["data"]["after"].__setitem__("id", "9")),
        ("detected_at", set_data("detected_at", "now")),
        ("strict JSON", lambda e: e["data"]["after"]["attributes"].__setitem__("x", float("nan"))),
        ("strict JSON", lambda e: e["data"]["after"]["attributes"].__setitem__("x", object())),
    ]


@pytest.mark.parametrize(("expect", "mutate"), _mutations())
def test_validate_rejects(expect: str, mutate: Any) -> None:
    env = copy.deepcopy(_good())
    validate_envelope(env)
    mutate(env)
    with pytest.raises(ValueError, match=expect.replace("{", r"\{").replace("}", r"\}")):
        validate_envelope(env)


def test_validate_rejects_changes_on_created_and_before_on_created() -> None:
    env = envelope(
        ORG,
        Change("created", "bookings", "42", None, rec(), {}),
        detected_at=DETECTED,
        ignore_fields=IGNORE,
    )
    env["data"]["changes"] = {"status": {"from": None, "to": "lead"}}
    with pytest.raises(ValueError, match="must be"):
        validate_envelope(env)
    env["data"]["changes"] = {}
    env["data"]["before"] = rec()
    with pytest.raises(ValueError, match=r"data\.before must be null"):
        validate_envelope(env)


def test_validate_schema_event_problems() -> None:
    env = schema_envelope(ORG, SchemaChange("bookings", ("vip",), ()), detected_at=DETECTED)
    bad = copy.deepcopy(env)
    bad["data"]["removed"] = None
    with pytest.raises(ValueError, match="removed"):
        validate_envelope(bad)
    bad = copy.deepcopy(env)
    bad["subject"] = "42"
    with pytest.raises(ValueError, match="subject"):
        validate_envelope(bad)
    bad = copy.deepcopy(env)
    bad["data"]["added"] = []
    with pytest.raises(ValueError, match="names no attribute"):
        validate_envelope(bad)
    with pytest.raises(ValueError, match="not an object"):
        validate_envelope([])  # type: ignore[arg-type]


def test_module_exports() -> None:
    for name in events.__all__:
        assert hasattr(events, name)


def test_to_json_keeps_contract_order_and_is_compact() -> None:
    env = _good()
    text = events.to_json(env)
    assert list(json.loads(text)) == [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "orgid",
        "data",
    ]
    assert "日本" in text and '", "' not in text


def test_an_application_of_the_apps_file_is_named_by_etapp_and_source() -> None:
    change = update(rec(), rec(status="definite", updated_at="2026-11-27T20:06:00Z"))
    single = envelope(ORG, change, detected_at=DETECTED, ignore_fields=IGNORE)
    named = envelope(ORG, change, detected_at=DETECTED, ignore_fields=IGNORE, app="acme")
    assert "etapp" not in single
    assert single["source"] == f"/orgs/{ORG}/bookings"
    assert named["etapp"] == "acme"
    assert named["source"] == f"/apps/acme/orgs/{ORG}/bookings"
    # The id is the contract's hash: the same change, whichever application saw it.
    assert named["id"] == single["id"]
    assert list(named) == [*list(single)[:8], "etapp", "data"]
    assert {k: v for k, v in named.items() if k not in ("etapp", "source")} == {
        k: v for k, v in single.items() if k != "source"
    }
    validate_envelope(named)
    validate_envelope(json.loads(events.to_json(named)))
    schema = schema_envelope(
        ORG, SchemaChange("bookings", ("vip",), ()), detected_at=DETECTED, app="acme"
    )
    assert schema["etapp"] == "acme"
    assert schema["source"] == f"/apps/acme/orgs/{ORG}/bookings"
    validate_envelope(schema)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"etapp": ""}, "etapp is not a non-empty string"),
        ({"etapp": "globex"}, "source is not /apps/<etapp>/orgs/<orgid>/<data.resource>"),
        ({"source": f"/orgs/{ORG}/bookings"}, "source is not /apps/<etapp>"),
    ],
)
def test_validation_checks_etapp_against_the_source(edit: dict[str, Any], problem: str) -> None:
    change = update(rec(), rec(status="definite", updated_at="2026-11-27T20:06:00Z"))
    env = envelope(ORG, change, detected_at=DETECTED, ignore_fields=IGNORE, app="acme") | edit
    with pytest.raises(ValueError, match=problem):
        validate_envelope(env)
