"""Value filters (``?where=``), pure: parsing, matching, and setting errors."""

from __future__ import annotations

import pytest

from etbridge.settings import SettingsError, load_settings, parse_sink
from etbridge.sinks import route
from etbridge.where import Where, matches, parse_where, value_text
from tests.support.delivery import envelope


def _booking(status_to: str | None = "definite", **attributes: object) -> dict[str, object]:
    changes = {"status": {"from": "tentative", "to": status_to}} if status_to else {}
    env = envelope("1001", "7", "updated", changes=changes)
    env["data"]["after"]["attributes"] = dict(attributes)
    return env


def _where(*clauses: str) -> list[Where]:
    return [parse_where(c) for c in clauses]


def test_the_contract_example() -> None:
    flt = parse_sink("https://hooks.example/et?where=data.changes.status.to:definite").filter
    assert route(flt, _booking("definite"))
    assert not route(flt, _booking("cancelled"))
    assert not route(flt, _booking(None))  # no status change at all
    created = envelope("1001", "7", "created")
    assert not route(flt, created)


def test_values_compare_as_the_json_text() -> None:
    env = _booking(guest_count=12, vip=True, rate=99.5, note=None, tags=["a", "b"])
    attrs = "data.after.attributes"
    assert matches(_where(f"{attrs}.guest_count:12"), env)
    assert not matches(_where(f"{attrs}.guest_count:012"), env)
    assert matches(_where(f"{attrs}.vip:true"), env)
    assert not matches(_where(f"{attrs}.vip:True"), env)
    assert matches(_where(f"{attrs}.rate:99.5"), env)
    assert matches(_where(f"{attrs}.note:null"), env)
    assert matches(_where(f"{attrs}.tags.1:b"), env)
    assert matches(_where("type:com.eventtemple.booking.updated"), env)
    assert [value_text(v) for v in ("12", 12, False, {"b": 1, "a": [1]})] == [
        "12",
        "12",
        "false",
        '{"a":[1],"b":1}',
    ]


def test_any_of_not_and_presence() -> None:
    env = _booking("definite", guest_count=12, note=None)
    assert matches(_where("data.changes.status.to:tentative|definite"), env)
    assert not matches(_where("data.changes.status.to:tentative|cancelled"), env)
    # PATH!:VALUE: the value differs, or the path is absent.
    assert not matches(_where("data.changes.status.to!:definite"), env)
    assert matches(_where("data.changes.status.to!:cancelled|tentative"), env)
    assert matches(_where("data.changes.name.to!:x"), env)
    # PATH:* present (null is not a value); PATH!:* absent.
    assert matches(_where("data.changes.status:*"), env)
    assert not matches(_where("data.changes.name:*"), env)
    assert not matches(_where("data.after.attributes.note:*"), env)
    assert matches(_where("data.changes.name!:*"), env)
    # Repeated clauses must all hold.
    assert matches(_where("data.changes.status.to:definite", "orgid:1001"), env)
    assert not matches(_where("data.changes.status.to:definite", "orgid:1002"), env)
    assert matches([], env)


def test_dotted_keys_and_strange_values() -> None:
    env = envelope(
        "1001", "7", "updated", changes={"relationships.room": {"from": None, "to": {"id": "9"}}}
    )
    assert matches(_where("data.changes.relationships.room.to.id:9"), env)
    assert matches(_where("data.changes.relationships.room:*"), env)
    # A value may hold ':' (times); only the first ':' splits.
    timed = {"time": "2026-11-27T20:04:03Z"}
    assert matches(_where("time:2026-11-27T20:04:03Z"), timed)
    assert not matches(_where("data.id.x:1"), env)  # a path through a string is absent


def test_url_combines_where_with_the_routing_filters() -> None:
    url = (
        "celery://q/t?types=updated,created&where=data.changes.status.to:definite"
        "&where=data.after.attributes.guest_count!:0"
    )
    flt = parse_sink(url).filter
    assert len(flt.where) == 2 and not flt.is_empty
    assert route(flt, _booking("definite", guest_count=5))
    assert not route(flt, _booking("definite", guest_count=0))
    assert not route(flt, {**_booking("definite"), "type": "com.eventtemple.booking.deleted"})


@pytest.mark.parametrize(
    "clause",
    ["nocolon", ":definite", "data..to:x", "data.changes.status.to:", "a.b:x||y", "data.!:x"],
)
def test_invalid_filters_are_setting_errors_naming_sinks(
    clause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    with pytest.raises(SettingsError) as info:
        load_settings(
            client_id="c",
            client_secret="s",
            sinks=f"redis-stream:a,redis-stream:b?where={clause}",
        )
    text = str(info.value)
    assert text.startswith("configuration error: ETBRIDGE_SINKS: ")
    assert "where=" in text and "\n" not in text


def test_tuning_a_sink_keeps_its_name_filtering_does_not() -> None:
    base = "https://hooks.example/et?token=abc&types=updated"
    name = parse_sink(base).name
    tuned = parse_sink(base + "&rate=5/s&order=none&disable_after=2d&secret=partner")
    assert tuned.name == name  # same consumer group: no history sent again
    assert (tuned.rate, tuned.order, tuned.disable_after, tuned.secret) == (
        5.0,
        "none",
        172800.0,
        "PARTNER",
    )
    assert parse_sink(base + "&where=type:x").name != name
    assert parse_sink("redis-stream:k?rate=2/m").name == parse_sink("redis-stream:k").name
    assert parse_sink("redis-stream:k?rate=120/m").rate == 2.0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("rate=0/s", "rate="),
        ("rate=fast", "rate="),
        ("order=random", "order="),
        ("disable_after=soon", "disable_after="),
        ("retry=1;x", "retry="),
        ("secret=a-b", "secret="),
    ],
)
def test_malformed_options_fail_at_start(
    option: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    with pytest.raises(SettingsError) as info:
        load_settings(client_id="c", client_secret="s", sinks=f"redis-stream:k?{option}")
    assert str(info.value).startswith("configuration error: ETBRIDGE_SINKS: ")
    assert message in str(info.value)


def test_compiled_clauses_agree_with_holds() -> None:
    envs = [
        _booking("definite", guest_count=12, vip=True, note=None, tags=["a", "b"]),
        _booking(None),
        envelope("1001", "7", "updated", changes={"relationships.room": {"from": None, "to": 1}}),
        {"type": "x", "data": "not a dict"},
    ]
    clauses = [
        "data.changes.status.to:definite",
        "data.changes.status.to!:definite|tentative",
        "data.after.attributes.guest_count:12",
        "data.after.attributes.vip:true",
        "data.after.attributes.note:*",
        "data.after.attributes.note!:*",
        "data.after.attributes.tags.1:b",
        "data.after.attributes.tags.9:b",
        "data.changes.relationships.room.to:1",
        "data.id.x!:1",
        "type:x",
    ]
    for text in clauses:
        clause = parse_where(text)
        compiled = clause.predicate()
        for env in envs:
            assert compiled(env) == clause.holds(env), (text, env.get("type"))
