"""OrgState against a real Redis: leases, the atomic commit, snapshots, the org registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from etbridge import changes, digest, keys, state
from etbridge.errors import LeaseLost
from etbridge.replies import text
from etbridge.state import CommitConflict, CommitPlan, OrgState
from tests.support import legacy_state
from tests.support.replies import stream

ORG = "1001"


def booking(n: int, **attributes: Any) -> dict[str, Any]:
    return {
        "type": "bookings",
        "id": str(n),
        "attributes": {"name": f"Booking {n} ☃", "status": "lead", **attributes},
    }


def org(r: redis.Redis) -> OrgState:
    return OrgState(r, keys.DEFAULT, ORG, "bookings")


def everything(r: redis.Redis) -> dict[str, Any]:
    """Every key and its content, to compare before and after a refused commit.

    Not the org's snapshot dictionary: it is written (once, ``SET NX``) before
    the commit script, and a blob that refers to it is only ever written after.
    """
    out: dict[str, Any] = {}
    for key in sorted(r.keys("*")):
        if key == keys.DEFAULT.snapshot_dict(ORG, "bookings").encode():
            continue
        kind = r.type(key)
        if kind == b"hash":
            out[text(key)] = r.hgetall(key)
        elif kind == b"set":
            out[text(key)] = r.smembers(key)
        elif kind == b"stream":
            out[text(key)] = r.xlen(key)
        else:
            out[text(key)] = r.get(key)
    return out


# --- packing ----------------------------------------------------------------------


def test_a_packed_record_unpacks_to_itself_and_carries_its_digest() -> None:
    records = [booking(n, notes="x" * n, guest_count=n) for n in range(40)]
    zdict = state.build_dictionary(records)
    for record in records:
        value = digest.record_digest(record)
        blob = state.pack_record(record, value, zdict)
        assert state.unpack_record(blob, zdict) == record
        assert state.stored_digest(blob) == value
        assert state.check_value(blob) == blob[: state.HEAD_SIZE] == b"\x03" + value
    raw = len(json.dumps(records[-1]).encode())
    assert len(state.pack_record(records[-1], digest.record_digest(records[-1]), zdict)) < raw
    assert state.stored_digest(b"") is None and state.check_value(b"") == b""


def test_the_frozen_old_writer_is_the_old_code() -> None:
    # tests/support/legacy_state.py must write what etbridge wrote before format 3.
    sample = changes.canonical(legacy_state.SAMPLE)
    assert legacy_state.old_digest(sample) == legacy_state.OLD_DIGEST
    generic, own = legacy_state.OLD_BLOBS
    assert legacy_state.old_blob(sample).hex() == generic
    assert legacy_state.old_blob(sample, legacy_state.old_dictionary([sample])).hex() == own


@pytest.mark.parametrize("with_dict", [False, True])
def test_values_of_the_old_formats_still_unpack(with_dict: bool) -> None:
    records = [booking(n, notes="y" * n) for n in range(10)]
    zdict = legacy_state.old_dictionary(records) if with_dict else None
    for record in records:
        blob = legacy_state.old_blob(record, zdict)
        assert state.unpack_record(blob, zdict) == record
        # No digest in it: the poller diffs it (and rewrites it) rather than skip it.
        assert state.stored_digest(blob) is None
        assert state.check_value(blob) == blob


def test_unpacking_refuses_what_it_cannot_read() -> None:
    zdict = state.build_dictionary([booking(1)])
    blob = state.pack_record(booking(2), digest.record_digest(booking(2)), zdict)
    with pytest.raises(ValueError, match="dictionary"):
        state.unpack_record(blob, None)
    with pytest.raises(ValueError, match="dictionary"):
        state.unpack_record(legacy_state.old_blob(booking(2), zdict), None)
    with pytest.raises(ValueError, match="unknown snapshot format"):
        state.unpack_record(b"\x09" + blob[1:])
    with pytest.raises(ValueError, match="decoding"):
        state.unpack_record("text, from a decode_responses client")
    with pytest.raises(ValueError, match="digest"):
        state.pack_record(booking(2), b"short", zdict)


def test_the_org_dictionary_is_written_once(r: redis.Redis) -> None:
    first = org(r).dictionary([booking(1)])
    second = org(r).dictionary([booking(2, notes="another sample entirely")])
    assert first and first == second == r.get(keys.DEFAULT.snapshot_dict(ORG, "bookings"))


# --- leases -----------------------------------------------------------------------


def test_a_lease_is_exclusive_fenced_and_released(r: redis.Redis) -> None:
    one = org(r).acquire_lease(10)
    assert one is not None
    assert org(r).acquire_lease(10) is None
    org(r).extend_lease(one)
    org(r).release_lease(one)
    two = org(r).acquire_lease(10)
    assert two is not None and int(two.token) == int(one.token) + 1
    with pytest.raises(LeaseLost):
        org(r).extend_lease(one)
    # Releasing with a stale token leaves the newer holder's lease alone.
    org(r).release_lease(one)
    assert r.get(keys.DEFAULT.lease(ORG)) == two.token.encode()


def test_a_lease_can_come_with_the_meta_read_under_it(r: redis.Redis) -> None:
    org(r).set_meta(watermark="2026-11-27T20:04:03Z", baselined="1")
    acquired = org(r).acquire_lease_with_meta(10)
    assert acquired is not None
    lease, meta = acquired
    assert meta == {"watermark": "2026-11-27T20:04:03Z", "baselined": "1"}
    assert r.get(keys.DEFAULT.lease(ORG)) == lease.token.encode()
    assert 0 < int(r.pttl(keys.DEFAULT.lease(ORG))) <= 10_000
    # Held: neither way gets it, and the meta is not read for a poll that has no lease.
    assert org(r).acquire_lease_with_meta(10) is None
    assert org(r).acquire_lease(10) is None
    org(r).release_lease(lease)
    again = org(r).acquire_lease_with_meta(10)
    assert again is not None and int(again[0].token) == int(lease.token) + 1
    assert OrgState(r, keys.DEFAULT, "9999", "bookings").acquire_lease_with_meta(10) == (
        state.Lease("9999", "1", 10_000),
        {},
    )


def test_a_last_commit_can_release_the_lease(r: redis.Redis) -> None:
    s = org(r)
    lease = s.acquire_lease(10)
    assert lease is not None
    assert s.commit(lease, CommitPlan(meta={"last_poll_at": "1"})) == 0
    assert r.exists(keys.DEFAULT.lease(ORG))  # an ordinary commit keeps (and extends) it
    assert s.commit(lease, CommitPlan(meta={"last_poll_at": "2"}, release=True)) == 0
    assert s.meta()["last_poll_at"] == "2"
    assert not r.exists(keys.DEFAULT.lease(ORG))
    # Released: the next poll gets it, and the released lease writes nothing more.
    fresh = s.acquire_lease(10)
    assert fresh is not None
    with pytest.raises(LeaseLost):
        s.commit(lease, CommitPlan(meta={"last_poll_at": "3"}, release=True))
    assert r.get(keys.DEFAULT.lease(ORG)) == fresh.token.encode()
    assert s.meta()["last_poll_at"] == "2"


# --- the commit -------------------------------------------------------------------


def plan_for(records: list[dict[str, Any]], **extra: Any) -> CommitPlan:
    plan = CommitPlan(**extra)
    for record in records:
        plan.checks[record["id"]] = b""
        plan.writes[record["id"]] = (digest.record_digest(record), record)
    return plan


def test_a_commit_writes_snapshots_events_seen_and_meta_together(r: redis.Redis) -> None:
    s = org(r)
    lease = s.acquire_lease(10)
    assert lease is not None
    records = [booking(1), booking(2)]
    plan = plan_for(
        records,
        events=['{"id": "e1"}', '{"id": "e2"}'],
        seen=["1", "2"],
        meta={"watermark": "2026-11-27T20:04:03Z"},
    )
    assert s.commit(lease, plan) == 2
    stored = s.read(["1", "2", "3"])
    assert {i: state.stored_digest(b) for i, b in stored.items()} == {
        "1": digest.record_digest(records[0]),
        "2": digest.record_digest(records[1]),
        "3": None,
    }
    assert org(r).records(["1", "2", "3"]) == {"1": records[0], "2": records[1]}
    assert not r.exists(keys.DEFAULT.fingerprints(ORG, "bookings"))  # format 3: one hash
    assert [f[b"event"] for _id, f in stream(r, keys.DEFAULT.outbox(ORG))] == [
        b'{"id": "e1"}',
        b'{"id": "e2"}',
    ]
    assert s.meta()["watermark"] == "2026-11-27T20:04:03Z"
    assert s.unseen_ids() == set() and s.count() == 2

    # Deleting a record and a meta field ("" deletes) in the next commit.
    later = CommitPlan(
        checks={"2": state.check_value(stored["2"])}, deletes=["2"], meta={"watermark": ""}
    )
    assert s.commit(lease, later) == 0
    assert s.stored_ids() == {"1"}
    assert "watermark" not in s.meta()


def test_a_commit_with_a_lost_lease_writes_nothing(r: redis.Redis) -> None:
    s = org(r)
    stale = s.acquire_lease(10)
    assert stale is not None
    s.release_lease(stale)
    fresh = s.acquire_lease(10)
    assert fresh is not None
    before = everything(r)
    with pytest.raises(LeaseLost):
        s.commit(stale, plan_for([booking(1)], events=['{"id": "e"}'], meta={"x": "1"}))
    assert everything(r) == before


def test_a_commit_whose_record_moved_writes_nothing(r: redis.Redis) -> None:
    s = org(r)
    lease = s.acquire_lease(10)
    assert lease is not None
    s.commit(lease, plan_for([booking(1)]))
    before = everything(r)
    # The diff read "absent" for id 1, but it is stored now.
    with pytest.raises(CommitConflict):
        s.commit(lease, plan_for([booking(1, status="definite")], events=['{"id": "e"}']))
    assert everything(r) == before


def test_a_commit_checks_the_digest_of_a_new_value_and_all_of_an_old_one(
    r: redis.Redis,
) -> None:
    s = org(r)
    lease = s.acquire_lease(10)
    assert lease is not None
    s.commit(lease, plan_for([booking(1)]))
    legacy_state.write_old_state(r, ORG, "bookings", [booking(2)])
    read = s.read(["1", "2"])
    before = everything(r)
    # Another writer moved both since: a new value with another digest, an old one
    # rewritten in the old format with other content.
    moved_new = state.pack_record(
        booking(1, status="lost"),
        digest.record_digest(booking(1, status="lost")),
        s.dictionary([]),
    )
    zdict = s.dictionary([])
    moved_old = legacy_state.old_blob(booking(2, status="lost"), zdict)
    for rid, value in (("1", moved_new), ("2", moved_old)):
        r.hset(keys.DEFAULT.snapshots(ORG, "bookings"), rid, value)
        plan = CommitPlan(checks={rid: state.check_value(read[rid])}, meta={"x": "1"})
        with pytest.raises(CommitConflict):
            s.commit(lease, plan)
        r.hset(keys.DEFAULT.snapshots(ORG, "bookings"), rid, read[rid])
    assert everything(r) == before
    # Unmoved, the old value is rewritten in format 3 and its fp entry dropped, in one commit.
    plan = CommitPlan(
        checks={i: state.check_value(b) for i, b in read.items()},
        writes={"2": (digest.record_digest(booking(2)), booking(2))},
    )
    assert s.commit(lease, plan) == 0
    assert state.stored_digest(s.read(["2"])["2"]) == digest.record_digest(booking(2))
    assert not r.exists(keys.DEFAULT.fingerprints(ORG, "bookings"))
    assert s.records(["1", "2"]) == {"1": booking(1), "2": booking(2)}


def test_reset_sweep_forgets_what_the_sweep_saw(r: redis.Redis) -> None:
    s = org(r)
    lease = s.acquire_lease(10)
    assert lease is not None
    s.commit(lease, plan_for([booking(1), booking(2)], seen=["1", "2"]))
    s.reset_sweep()
    assert s.unseen_ids() == {"1", "2"}


# --- the registry ---------------------------------------------------------------------


def test_the_org_registry_keeps_the_first_discovery_and_marks_removals(r: redis.Redis) -> None:
    state.register_org(r, keys.DEFAULT, "7", name="Seven")
    first = state.known_orgs(r, keys.DEFAULT)["7"]["discovered_at"]
    state.mark_removed(r, keys.DEFAULT, "7")
    assert "removed_at" in state.known_orgs(r, keys.DEFAULT)["7"]
    state.register_org(r, keys.DEFAULT, "7", name="Seven again")
    again = state.known_orgs(r, keys.DEFAULT)["7"]
    assert again["discovered_at"] == first and again["name"] == "Seven again"
    assert "removed_at" not in again
    state.register_org(r, keys.DEFAULT, "8")
    state.mark_removed(r, keys.DEFAULT, "8")
    assert state.registered_org_ids(r, keys.DEFAULT) == {
        "7",
        "8",
    }  # vanished ones are registered too


def test_iter_meta_reads_many_orgs_at_once(r: redis.Redis) -> None:
    OrgState(r, keys.DEFAULT, "1", "bookings").set_meta(watermark="a")
    OrgState(r, keys.DEFAULT, "2", "bookings").set_meta(watermark="b", errors="3")
    assert state.iter_meta(r, keys.DEFAULT, ["1", "2", "3"], "bookings") == {
        "1": {"watermark": "a"},
        "2": {"watermark": "b", "errors": "3"},
        "3": {},
    }
