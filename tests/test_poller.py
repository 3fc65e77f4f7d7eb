"""Change detection end to end: sandbox over HTTP, real Redis, the real poller."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from etbridge import changes, keys, stateformat
from etbridge.errors import LeaseLost, RetriableError
from etbridge.events import validate_envelope
from etbridge.poller import Poller
from etbridge.pollhooks import Hooks
from etbridge.runtime import PLANNED_RETRIES, Runtime
from etbridge.state import CommitPlan, OrgState
from tests.support import legacy_state
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events, runtime_for

ORG = "1001"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=60, seed=7, rate_limit=100_000) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Runtime:
    sandbox.reset()
    return runtime_for(sandbox, redis_url)


def poller(rt: Runtime, **kw: Any) -> Poller:
    return Poller(rt.redis, rt.settings, rt.api, **kw)


def stored_records(rt: Runtime, org: str = ORG) -> dict[str, dict[str, Any]]:
    state = OrgState(rt.redis, keys.DEFAULT, org, "bookings")
    return state.records(sorted(state.stored_ids()))


def truth_records(sandbox: Sandbox, org: str = ORG) -> dict[str, dict[str, Any]]:
    bookings = sandbox.truth(org)["orgs"][org]["bookings"]
    return {rid: changes.canonical(rec) for rid, rec in bookings.items()}


def assert_in_sync(rt: Runtime, sandbox: Sandbox, org: str = ORG) -> None:
    assert stored_records(rt, org) == truth_records(sandbox, org)


def test_baseline_is_silent_and_complete(rt: Runtime, sandbox: Sandbox) -> None:
    (result,) = poller(rt).poll(ORG)
    assert result.mode == "sweep"
    assert result.complete
    assert outbox_events(rt.redis, ORG) == []
    assert_in_sync(rt, sandbox)
    meta = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").meta()
    assert meta["baselined"] == "1"
    assert meta["watermark"].endswith("Z")


def test_emit_baseline_snapshots(sandbox: Sandbox, redis_url: str) -> None:
    sandbox.reset()
    rt = runtime_for(sandbox, redis_url, emit_baseline=True)
    poller(rt).poll(ORG)
    events = outbox_events(rt.redis, ORG)
    assert len(events) == len(truth_records(sandbox))
    assert {e["type"] for e in events} == {"com.eventtemple.booking.snapshot"}
    for env in events:
        validate_envelope(env)
        assert env["data"]["changes"] == {}
        assert env["data"]["before"] is None


def test_each_kind_of_change(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    created = sandbox.mutate(1, org=ORG, kinds=["create"])[0]
    updated = sandbox.mutate(1, org=ORG, kinds=["update"])[0]
    touched = sandbox.mutate(1, org=ORG, kinds=["touch"])[0]
    before_update = stored_records(rt)[updated["id"]]
    (result,) = p.poll(ORG)
    assert result.mode == "incremental"
    events = outbox_events(rt.redis, ORG)
    by_subject = {e["subject"]: e for e in events}
    assert len(events) == 2 if touched["id"] not in (created["id"], updated["id"]) else True
    assert by_subject[created["id"]]["type"] == "com.eventtemple.booking.created"
    assert by_subject[created["id"]]["data"]["before"] is None
    up = by_subject[updated["id"]]
    assert up["type"] == "com.eventtemple.booking.updated"
    assert up["data"]["before"] == before_update
    truth = truth_records(sandbox)
    assert up["data"]["after"] == truth[updated["id"]]
    expected = {name for name in updated["fields"] if name != "updated_at"}
    assert set(up["data"]["changes"]) == expected
    for name, change in up["data"]["changes"].items():
        if name.startswith("relationships."):
            rel = name.split(".", 1)[1]
            assert change["to"] == truth[updated["id"]]["relationships"][rel]["data"]
        else:
            assert change["from"] == before_update["attributes"].get(name)
            assert change["to"] == truth[updated["id"]]["attributes"].get(name)
    assert touched["id"] not in by_subject or touched["id"] in (created["id"], updated["id"])
    # The touch moved the stored snapshot all the same.
    assert_in_sync(rt, sandbox)
    for env in events:
        validate_envelope(env)

    deleted = sandbox.mutate(1, org=ORG, kinds=["delete"])[0]
    p.poll(ORG)  # incremental polls cannot see deletions
    assert [e for e in outbox_events(rt.redis, ORG) if e["subject"] == deleted["id"]] == []
    (result,) = p.poll(ORG, "sweep")
    assert result.deleted == 1
    gone = [e for e in outbox_events(rt.redis, ORG) if e["subject"] == deleted["id"]]
    assert [e["type"] for e in gone] == ["com.eventtemple.booking.deleted"]
    assert gone[0]["data"]["after"] is None
    assert gone[0]["data"]["before"]["id"] == deleted["id"]
    assert_in_sync(rt, sandbox)


def test_several_edits_arrive_as_one_update(rt: Runtime, sandbox: Sandbox) -> None:
    org = sandbox.add_org(bookings=1)
    p = poller(rt)
    p.poll(org)
    (target,) = truth_records(sandbox, org)
    first = stored_records(rt, org)[target]
    sandbox.mutate(4, org=org, kinds=["update"])
    p.poll(org)
    events = outbox_events(rt.redis, org)
    assert len(events) <= 1
    if events:
        assert events[0]["data"]["before"] == first
        assert events[0]["data"]["after"] == truth_records(sandbox, org)[target]
    previous_after = events[0]["data"]["after"] if events else first
    sandbox.mutate(2, org=org, kinds=["update"])
    p.poll(org)
    later = outbox_events(rt.redis, org)[len(events) :]
    assert len(later) <= 1
    if later:
        # before is the last emitted after (the stored snapshot), never an older version.
        assert later[0]["data"]["before"] == previous_after
    assert_in_sync(rt, sandbox, org)
    sandbox.remove_org(org)


def test_polling_twice_adds_nothing(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.mutate(20, org=ORG, kinds=["create", "update", "touch"])
    p.poll(ORG)
    n = len(outbox_events(rt.redis, ORG))
    assert n > 0
    p.poll(ORG)
    p.poll(ORG, "sweep")
    assert len(outbox_events(rt.redis, ORG)) == n


def test_concurrent_polls_of_one_org_add_no_duplicates(rt: Runtime, sandbox: Sandbox) -> None:
    poller(rt).poll(ORG)
    sandbox.mutate(30, org=ORG, kinds=["create", "update"])
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        local = runtime_for(sandbox, rt.settings.redis_url)
        barrier.wait()
        try:
            for _ in range(3):
                poller(local).poll(ORG)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    events = outbox_events(rt.redis, ORG)
    ids = Counter(e["id"] for e in events)
    assert ids and max(ids.values()) == 1
    pairs = Counter(
        (e["subject"], e["data"]["before"] and str(e["data"]["before"]), str(e["data"]["after"]))
        for e in events
    )
    assert max(pairs.values()) == 1
    assert_in_sync(rt, sandbox)


def test_edits_during_paging_and_shared_timestamps(rt: Runtime, sandbox: Sandbox) -> None:
    rt2 = runtime_for(sandbox, rt.settings.redis_url, page_size=5)
    p = poller(rt2)
    p.poll(ORG)
    # Many records share one second; every page request edits a few more.
    sandbox.mutate(40, org=ORG, kinds=["update", "create", "touch"])
    sandbox.faults(mutate_between_pages=2)
    try:
        p.poll(ORG)
        p.poll(ORG)
    finally:
        sandbox.faults(mutate_between_pages=0)
    p.poll(ORG)  # a calm poll after the storm catches what changed behind the cursor
    p.poll(ORG, "sweep")
    assert_in_sync(rt2, sandbox)
    events = outbox_events(rt2.redis, ORG)
    assert max(Counter(e["id"] for e in events).values()) == 1
    # Every booking's last event carries the truth, give or take the ignored
    # fields: a "touch" after that event moves only updated_at and emits nothing.
    last: dict[str, dict[str, Any]] = {}
    for env in events:
        last[env["subject"]] = env
    truth = truth_records(sandbox)
    for rid, env in last.items():
        if env["type"].endswith("deleted"):
            assert rid not in truth
        else:
            assert _without_ignored(env["data"]["after"], rt2) == _without_ignored(truth[rid], rt2)


def _without_ignored(record: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    attributes = {
        k: v for k, v in record["attributes"].items() if k not in rt.settings.ignore_fields
    }
    return {**record, "attributes": attributes}


def test_interrupted_sweep_declares_no_deletion(rt: Runtime, sandbox: Sandbox) -> None:
    rt2 = runtime_for(sandbox, rt.settings.redis_url, page_size=10)
    p = poller(rt2)
    p.poll(ORG)
    deleted = sandbox.mutate(2, org=ORG, kinds=["delete"])
    sandbox.force_429(count=0, retry_after=1)
    # Fail every request after the first page: the sweep is cut short.
    sandbox.faults(error_500=1.0)
    with pytest.raises(RetriableError):  # any retriable error ends this sweep
        p.poll(ORG, "sweep")
    sandbox.faults(error_500=0.0)
    assert all(
        e["type"] != "com.eventtemple.booking.deleted" for e in outbox_events(rt2.redis, ORG)
    )
    (result,) = p.poll(ORG, "sweep")
    assert result.deleted == 2
    gone = {e["subject"] for e in outbox_events(rt2.redis, ORG) if e["type"].endswith("deleted")}
    assert gone == {d["id"] for d in deleted}


def test_schema_drift_is_one_event_not_a_flood(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.schema(add="region", value="EMEA")
    try:
        p.poll(ORG, "sweep")
        sandbox.mutate(1, org=ORG, kinds=["touch"])
        p.poll(ORG)
        events = outbox_events(rt.redis, ORG)
        assert [e["type"] for e in events] == ["com.eventtemple.schema.changed"]
        assert events[0]["data"]["added"] == ["region"]
        assert events[0]["data"]["removed"] == []
        assert events[0]["subject"] == "bookings"
        validate_envelope(events[0])
        # A real change later does not report the absorbed attribute.
        sandbox.mutate(3, org=ORG, kinds=["update"])
        p.poll(ORG)
        for env in outbox_events(rt.redis, ORG)[1:]:
            assert "region" not in env["data"]["changes"]
    finally:
        sandbox.schema(remove="region")


def test_malformed_page_is_not_half_committed(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    before = rt.redis.xlen(keys.DEFAULT.outbox(ORG))
    sandbox.mutate(5, org=ORG, kinds=["update"])
    sandbox.faults(truncated=1.0)
    try:
        with pytest.raises(RetriableError):  # never a parsed half page
            p.poll(ORG)
    finally:
        sandbox.faults(truncated=0.0)
    assert rt.redis.xlen(keys.DEFAULT.outbox(ORG)) == before
    p.poll(ORG)
    assert rt.redis.xlen(keys.DEFAULT.outbox(ORG)) > before


def test_state_stored_before_format_3_polls_silently_and_is_rewritten(
    rt: Runtime, sandbox: Sandbox
) -> None:
    # A deployment upgraded from the two-hash layout (fp + snap formats 1-2): its
    # baseline as the old code stored it, with the meta the same poll would leave.
    poller(rt).poll(ORG)
    truth = truth_records(sandbox)
    rt.redis.delete(keys.DEFAULT.snapshots(ORG, "bookings"))
    legacy_state.write_old_state(rt.redis, ORG, "bookings", list(truth.values()))
    snap = keys.DEFAULT.snapshots(ORG, "bookings")
    assert {v[:1] for v in rt.redis.hvals(snap)} == {b"\x02"}
    assert rt.redis.hlen(keys.DEFAULT.fingerprints(ORG, "bookings")) == len(truth)

    p = poller(rt)
    (incremental,) = p.poll(ORG)
    (sweep,) = p.poll(ORG, "sweep")
    assert incremental.mode == "incremental" and sweep.complete
    assert sweep.records == len(truth)
    assert outbox_events(rt.redis, ORG) == []  # no spurious updated (nor created) event
    # Every record rewritten in format 3 inside the page commits; the old digests gone.
    assert {v[:1] for v in rt.redis.hvals(snap)} == {b"\x03"}
    assert not rt.redis.exists(keys.DEFAULT.fingerprints(ORG, "bookings"))
    assert_in_sync(rt, sandbox)

    # The rewritten state detects a real change as before.
    updated = sandbox.mutate(1, org=ORG, kinds=["update"])[0]
    p.poll(ORG)
    events = outbox_events(rt.redis, ORG)
    assert [(e["type"], e["subject"]) for e in events] == [
        ("com.eventtemple.booking.updated", updated["id"])
    ]
    assert events[0]["data"]["before"] == truth[updated["id"]]


def test_while_old_workers_may_run_every_write_keeps_their_digest_entry(
    rt: Runtime, sandbox: Sandbox
) -> None:
    # An upgraded deployment mid-rollout: orgs registered by the old version, no
    # format mark. A worker from before format 3 reads a record without an fp entry
    # as never stored (it would emit created), so each write keeps one: the new
    # digest, which its own never matches, and then it fails on the format-3 value.
    poller(rt).poll(ORG)
    truth = truth_records(sandbox)
    snap, fp = keys.DEFAULT.snapshots(ORG, "bookings"), keys.DEFAULT.fingerprints(ORG, "bookings")
    rt.redis.delete(snap)
    legacy_state.write_old_state(rt.redis, ORG, "bookings", list(truth.values()))
    rt.redis.delete(keys.DEFAULT.state_format)
    rt.redis.hset(keys.DEFAULT.orgs, ORG, "{}")
    stateformat.forget()
    assert stateformat.compat(rt.redis, keys.DEFAULT)

    p = poller(rt)
    p.poll(ORG)
    p.poll(ORG, "sweep")
    (created,) = sandbox.mutate(1, org=ORG, kinds=["create"])
    p.poll(ORG)
    assert [e["subject"] for e in outbox_events(rt.redis, ORG)] == [created["id"]]
    values = {bytes(k): bytes(v) for k, v in rt.redis.hgetall(snap).items()}  # type: ignore[arg-type]
    assert {v[:1] for v in values.values()} == {b"\x03"}
    assert rt.redis.hgetall(fp) == {rid: v[1:17].hex().encode() for rid, v in values.items()}
    assert_in_sync(rt, sandbox)

    # Every worker runs this version: the fp hashes go, and later writes keep none.
    assert stateformat.finish_upgrade(rt.redis, keys.DEFAULT, [ORG], ["bookings"], settle=0) == 1
    assert not stateformat.compat(rt.redis, keys.DEFAULT) and not rt.redis.exists(fp)
    sandbox.mutate(1, org=ORG, kinds=["update"])
    p.poll(ORG)
    assert not rt.redis.exists(fp)
    assert_in_sync(rt, sandbox)


def test_stale_lease_cannot_write(rt: Runtime, sandbox: Sandbox) -> None:
    state = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings")
    old = state.acquire_lease(0.05)
    assert old is not None
    rt.redis.delete(keys.DEFAULT.lease(ORG))  # as if it expired
    new = state.acquire_lease(30)
    assert new is not None and int(new.token) > int(old.token)
    with pytest.raises(LeaseLost):
        state.commit(old, CommitPlan(meta={"x": "1"}))
    state.commit(new, CommitPlan(meta={"x": "1"}))
    assert state.meta()["x"] == "1"


def test_outbox_holds_redis_bytes(r: redis.Redis) -> None:
    # Guard for the key layout: every per-org key shares the org's hash tag.
    tag = keys.org_tag(ORG)
    for key in (
        keys.DEFAULT.snapshots(ORG, "bookings"),
        keys.DEFAULT.fingerprints(ORG, "bookings"),
        keys.DEFAULT.org_meta(ORG, "bookings"),
        keys.DEFAULT.sweep_seen(ORG, "bookings"),
        keys.DEFAULT.lease(ORG),
        keys.DEFAULT.outbox(ORG),
    ):
        assert tag in key


def test_long_sweep_resumes_from_its_cursor(rt: Runtime, sandbox: Sandbox) -> None:
    rt2 = runtime_for(sandbox, rt.settings.redis_url, page_size=10)
    poller(rt2).poll(ORG)
    deleted = sandbox.mutate(1, org=ORG, kinds=["delete"])[0]
    n_pages = -(-len(truth_records(sandbox)) // 10)
    before = sandbox.counters()["list_requests_by_org"].get(ORG, 0)
    sliced = poller(rt2, slice_seconds=0)  # every poll pauses after one page
    polls = 0
    while True:
        (result,) = sliced.poll(ORG, "sweep")
        polls += 1
        if result.complete:
            break
        assert result.pages == 1 and result.deleted == 0
        assert OrgState(rt2.redis, keys.DEFAULT, ORG, "bookings").meta()["sweep_cursor"]
        assert polls <= n_pages + 1
    assert result.deleted == 1
    requests = sandbox.counters()["list_requests_by_org"].get(ORG, 0) - before
    assert requests <= n_pages + 1  # resumed, never started over
    gone = [e for e in outbox_events(rt2.redis, ORG) if e["type"].endswith("deleted")]
    assert [e["subject"] for e in gone] == [deleted["id"]]


def test_rejected_filter_falls_back_to_sweeps(rt: Runtime, sandbox: Sandbox) -> None:
    p = poller(rt)
    p.poll(ORG)
    sandbox.faults(no_updated_filter=1)
    try:
        deleted = sandbox.mutate(1, org=ORG, kinds=["delete"])[0]
        (result,) = p.poll(ORG)  # asked for incremental, falls back at once
        assert result.mode == "sweep"
        assert result.deleted == 1
        meta = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").meta()
        assert meta["filter_unsupported"] == "1"
        (again,) = p.poll(ORG)
        assert again.mode == "sweep"
    finally:
        sandbox.faults(no_updated_filter=0)
    gone = [e["subject"] for e in outbox_events(rt.redis, ORG) if e["type"].endswith("deleted")]
    assert gone == [deleted["id"]]


def test_sweep_pages_are_sent_one_quota_at_a_time(rt: Runtime, sandbox: Sandbox) -> None:
    rt2 = runtime_for(sandbox, rt.settings.redis_url, page_size=10)
    poller(rt2).poll(ORG)
    (result,) = poller(rt2).poll(ORG, "sweep", max_pages=3)
    # Three pages, then the sweep yields with its cursor until the planner sends the next page.
    assert result.pages == 3
    assert not result.complete
    meta = OrgState(rt2.redis, keys.DEFAULT, ORG, "bookings").meta()
    assert meta["sweep_active"] == "1" and meta["sweep_cursor"]


def test_a_planned_poll_of_a_failing_resource_asks_twice_at_most(
    rt: Runtime, sandbox: Sandbox
) -> None:
    rt.poller(planned=True).poll(ORG)
    sandbox.faults(bookings_error_500=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(RetriableError):
            rt.poller(planned=True).poll(ORG)
        served = sandbox.counters()["faults_served"].get("bookings_error_500", 0)
        # The first request and one retry; the planner plans the rest on its backoff.
        assert served == 1 + PLANNED_RETRIES == 2
        # One jittered backoff of the client's first step, not the four-step schedule.
        assert time.monotonic() - started < rt.api.backoff_base + 2.0
    finally:
        sandbox.faults(bookings_error_500=0.0)
    # Other callers (tools, the benchmark's drivers) keep the client's full schedule.
    assert rt.api.max_retries > PLANNED_RETRIES


def test_a_poll_holds_the_lease_until_its_last_commit_releases_it(
    rt: Runtime, sandbox: Sandbox
) -> None:
    """The lease comes with the meta (one round trip) and goes with the last commit."""
    poller(rt).poll(ORG)  # the baseline
    held: list[Any] = []
    p = poller(
        rt, hooks=Hooks(on_started=lambda: held.append(rt.redis.get(keys.DEFAULT.lease(ORG))))
    )
    sandbox.mutate(1, org=ORG, kinds=["update"])
    (result,) = p.poll(ORG)
    assert result.mode == "incremental" and result.complete and result.events == 1
    assert held and held[0] is not None  # held while the poll ran
    assert not rt.redis.exists(keys.DEFAULT.lease(ORG))  # and free once it is done
    assert (
        OrgState(rt.redis, keys.DEFAULT, ORG, "bookings").meta()["last_poll_mode"] == "incremental"
    )
    # Two resources: the lease spans both, and the second's last commit frees it.
    results = p.poll(ORG, resources=["bookings", "contacts"])
    assert [(r.resource, r.complete) for r in results] == [("bookings", True), ("contacts", True)]
    assert results[1].mode == "sweep"  # the contacts' baseline
    assert not rt.redis.exists(keys.DEFAULT.lease(ORG))
    assert OrgState(rt.redis, keys.DEFAULT, ORG, "contacts").meta()["baselined"] == "1"
    (again,) = p.poll(ORG, resources=["contacts"])
    assert again.mode == "incremental" and again.complete
    assert not rt.redis.exists(keys.DEFAULT.lease(ORG))
    assert len(held) == 3
