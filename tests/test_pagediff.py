"""The pure page step (etbridge/pagediff.py): schema drift, then the diff; no Redis."""

from __future__ import annotations

import json
from typing import Any

from etbridge.changes import Change, SchemaChange, Stored, fingerprint
from etbridge.digest import record_digest
from etbridge.pagediff import diff_page, schema_memory
from tests.test_changes import IGNORE, canon


def test_a_page_with_nothing_moved_moves_nothing() -> None:
    known = {"status"}
    diff = diff_page("bookings", [canon("1")], {}, IGNORE, known=known, absorbed=set())
    assert diff.drift is None and diff.changes == [] and diff.writes == [] and diff.meta == {}
    assert diff.known is known


def test_the_baseline_learns_the_names_and_reports_no_drift() -> None:
    page = [canon("1"), canon("2")]
    diff = diff_page(
        "bookings",
        page,
        {"1": None, "2": None},
        IGNORE,
        known=set(),
        absorbed=set(),
        baseline=True,
        emit_baseline=True,
    )
    assert diff.drift is None
    assert [c.op for c in diff.changes] == ["snapshot", "snapshot"]
    assert diff.writes == page
    assert diff.known == set(canon("1")["attributes"])
    assert json.loads(diff.meta["attrs"]) == sorted(diff.known)
    assert "absorbed" not in diff.meta


def test_only_the_moved_records_are_diffed_and_written() -> None:
    old = canon("1")
    new = canon("1", status="definite")
    same = canon("2")
    known = set(old["attributes"])
    diff = diff_page(
        "bookings",
        [new, same],
        {"1": Stored(fingerprint(old, IGNORE), old)},
        IGNORE,
        known=known,
        absorbed=set(),
    )
    assert [(c.op, c.id, c.changes) for c in diff.changes] == [
        ("updated", "1", {"status": {"from": "tentative", "to": "definite"}})
    ]
    assert diff.writes == [new] and diff.meta == {}


def test_drift_is_absorbed_and_remembered() -> None:
    old = canon("1")
    new = canon("1", vip="gold")
    diff = diff_page(
        "bookings",
        [new],
        {"1": Stored(fingerprint(old, IGNORE), old)},
        IGNORE,
        known=set(old["attributes"]),
        absorbed={"legacy"},
    )
    assert diff.drift == SchemaChange("bookings", ("vip",), ())
    assert diff.changes == [] and diff.writes == [new]
    assert diff.absorbed == {"legacy", "vip"} and "vip" in diff.known
    assert schema_memory(diff.meta) == (diff.known, diff.absorbed)


def test_schema_memory_of_an_empty_meta_is_empty() -> None:
    assert schema_memory({}) == (set(), set())


class _FakeOrgState:
    """The poller's page path in memory: digests pick the moved records, diff_page does the rest."""

    def __init__(self) -> None:
        self.snaps: dict[str, Stored] = {}
        self.known: set[str] = set()
        self.absorbed: set[str] = set()
        self.meta: dict[str, str] = {}

    def poll(
        self, page: list[dict[str, Any]], *, baseline: bool = False
    ) -> tuple[SchemaChange | None, list[Change]]:
        moved = {
            r["id"]: self.snaps.get(r["id"])
            for r in page
            if r["id"] not in self.snaps
            or record_digest(self.snaps[r["id"]].record) != record_digest(r)
        }
        diff = diff_page(
            "bookings",
            page,
            moved,
            IGNORE,
            known=self.known,
            absorbed=self.absorbed,
            baseline=baseline,
        )
        for rec in diff.writes:
            self.snaps[rec["id"]] = Stored(fingerprint(rec, IGNORE), rec)
        self.known, self.absorbed = diff.known, diff.absorbed
        if diff.meta:
            # What the poller stores reads back as the same memory.
            assert schema_memory(self.meta | diff.meta) == (diff.known, diff.absorbed)
            self.meta |= diff.meta
        return diff.drift, diff.changes


def _pages(recs: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [recs[i : i + size] for i in range(0, len(recs), size)]


def test_schema_attribute_added_to_every_record_is_one_event_and_no_flood() -> None:
    org = _FakeOrgState()
    ids = [str(i) for i in range(50)]
    for page in _pages([canon(i) for i in ids], 10):
        assert org.poll(page, baseline=True) == (None, [])

    # A new API release: every booking gains `vip` (updated_at unchanged).
    drifts, updates = [], []
    for page in _pages([canon(i, vip="gold") for i in ids], 10):
        drift, evs = org.poll(page)
        drifts += [drift] if drift else []
        updates += evs
    assert drifts == [SchemaChange("bookings", ("vip",), ())]
    assert updates == []
    assert all(org.snaps[i].record["attributes"]["vip"] == "gold" for i in ids)
    # Next poll: all fast, nothing at all.
    assert org.poll([canon(i, vip="gold") for i in ids[:10]]) == (None, [])
    # A later real change of the new attribute is reported.
    drift, evs = org.poll([canon("3", vip="silver", updated_at="2026-12-01T00:00:00Z")])
    assert drift is None
    assert [e.changes for e in evs] == [{"vip": {"from": "gold", "to": "silver"}}]


def test_schema_added_then_seen_lazily_by_incremental_polls() -> None:
    # Incremental polls only see edited records: the other snapshots absorb
    # the attribute when they next appear, still without being reported.
    org = _FakeOrgState()
    org.poll([canon(str(i)) for i in range(5)], baseline=True)
    drift, evs = org.poll([canon("0", vip=1, status="definite")])
    assert drift == SchemaChange("bookings", ("vip",), ())
    assert [e.changes for e in evs] == [{"status": {"from": "tentative", "to": "definite"}}]
    after, before = evs[0].after, evs[0].before
    assert after is not None and before is not None
    assert "vip" in after["attributes"] and "vip" not in before["attributes"]
    drift, evs = org.poll([canon("1", vip=2, guest_count=3)])
    assert drift is None
    assert [e.changes for e in evs] == [{"guest_count": {"from": 120, "to": 3}}]
    page = [canon(str(i), vip=i) for i in range(2, 5)]
    page += [canon("0", vip=0, status="definite"), canon("1", vip=1, guest_count=3)]
    drift, evs = org.poll(page)
    assert drift is None
    # Records 2-4 absorb vip silently; 0 and 1 changed a value they already had.
    assert [(e.id, e.changes) for e in evs] == [
        ("0", {"vip": {"from": 1, "to": 0}}),
        ("1", {"vip": {"from": 2, "to": 1}}),
    ]


def test_schema_attribute_removed_from_every_record() -> None:
    org = _FakeOrgState()
    org.poll([canon(str(i)) for i in range(20)], baseline=True)
    page = []
    for i in range(20):
        rec = canon(str(i))
        del rec["attributes"]["notes"]
        page.append(rec)
    drift, evs = org.poll(page)
    assert drift == SchemaChange("bookings", (), ("notes",))
    assert evs == []
    assert all("notes" not in s.record["attributes"] for s in org.snaps.values())
    assert org.poll(page) == (None, [])


def test_schema_null_attribute_appearing_is_absorbed_and_null_disappearing_is_no_change() -> None:
    org = _FakeOrgState()
    org.poll([canon(str(i)) for i in range(3)], baseline=True)
    drift, evs = org.poll([canon(str(i), vip=None) for i in range(3)])
    assert drift == SchemaChange("bookings", ("vip",), ()) and evs == []
    # referral_source_id is null everywhere: its disappearance is one schema
    # event, and no booking reports it (absent == null).
    page = [canon(str(i), vip=None) for i in range(3)]
    for rec in page:
        del rec["attributes"]["referral_source_id"]
    drift, evs = org.poll(page)
    assert drift == SchemaChange("bookings", (), ("referral_source_id",)) and evs == []
