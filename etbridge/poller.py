"""One poll of one org: list, diff against the stored state, commit page by page.

The poller holds the org's lease for the whole poll (one worker per org
fleet-wide); every page commit re-checks its fencing token, so a worker that
lost the lease (a GC pause, a partition) cannot write behind its successor.

- *incremental*: ``filter[updated_at][gt] = watermark - lookback``. The
  watermark is the newest ``updated_at`` seen (the API's clock) and moves only
  after a complete scan; the overlap costs nothing (unchanged = no event).
- *sweep*: a complete listing by id, committed page by page, seen ids kept in
  Redis; only a sweep that reached its last page declares the unseen stored
  records deleted. Its cursor is saved per page, so a cut-short sweep resumes.

The first poll of an org is a sweep that sets the baseline (silently, or as
``snapshot`` events with ``ETBRIDGE_EMIT_BASELINE``). docs/page-commit.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from etbridge import (
    changes,
    confirmations,
    digest,
    events,
    holds,
    pagediff,
    settlement,
    shutdown,
    watermark,
)
from etbridge.client import EventTempleClient, RepeatedCursor
from etbridge.errors import (
    AccessLost,
    FatalError,
    FilterRejected,
    LeaseLost,
    MalformedResponse,
)
from etbridge.pollhooks import Hooks
from etbridge.settings import Settings
from etbridge.state import CommitConflict, CommitPlan, Lease, OrgState, check_value, stored_digest
from etbridge.timefmt import rfc3339

log = logging.getLogger("etbridge.poller")

Mode = Literal["incremental", "sweep"]

# A poll's lease lives this long unless its heartbeat extends it, so a poll
# lost with its worker (SIGKILL, OOM, host loss) frees its org this soon.
LEASE_TTL = 20.0
# A sweep pauses after this long (its cursor saved) even when its page quota
# is not spent, so one org's thousands of pages never hold a worker for long.
SWEEP_SLICE = 10.0
# A page whose records keep moving under us (another writer) is re-read this often.
_MAX_CONFLICTS = 5


@dataclass
class PollResult:
    """What one poll of one org and resource did (logged, and returned by the task)."""

    org_id: str
    resource: str
    mode: Mode
    pages: int = 0
    records: int = 0
    events: int = 0
    deleted: int = 0
    complete: bool = False
    skipped: str = ""
    ms: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the task's result: Celery logs its repr, at a cost per item."""
        state = self.skipped or ("complete" if self.complete else "paused")
        return (
            f"{self.org_id} {self.resource} {self.mode} {state} pages={self.pages} "
            f"records={self.records} events={self.events} deleted={self.deleted} "
            f"ms={self.ms:.1f}"
        )


class _Heartbeat(threading.Thread):
    """Extends the leases of this process's polls every third of their lifetime while they run.

    A page fetch may wait on the budget, a slow API or retries for longer than
    a lease lives; the heartbeat keeps the lease while this process is alive,
    and a dead process stops extending it, so its org is free again within one
    lease lifetime. The commits re-check the fencing token in any case. One
    thread serves every poll of the process (see :func:`_heartbeat`): a thread
    started per poll cost a tenth of the CPU of a poll that finds nothing.
    """

    def __init__(self) -> None:
        super().__init__(name="lease-heartbeat", daemon=True)
        self._wake = threading.Condition()
        # registration -> (state, lease, when its next extension is due)
        self._held: dict[int, tuple[OrgState, Lease, float]] = {}
        self._count = itertools.count()

    def hold(self, state: OrgState, lease: Lease) -> int:
        with self._wake:
            n = next(self._count)
            self._held[n] = (state, lease, time.monotonic() + lease.ttl_ms / 3000)
            self._wake.notify()
        return n

    def drop(self, n: int) -> None:
        with self._wake:
            self._held.pop(n, None)

    def run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [(n, st, lease) for n, (st, lease, at) in self._held.items() if at <= now]
                for n, st, lease in due:
                    self._held[n] = (st, lease, now + lease.ttl_ms / 3000)
                if not due:
                    nearest = min((at for *_, at in self._held.values()), default=None)
                    self._wake.wait(None if nearest is None else max(0.0, nearest - now))
                    continue
            # Outside the lock: a slow Redis never delays a poll's hold or drop.
            for n, st, lease in due:
                try:
                    st.extend_lease(lease)
                except LeaseLost:
                    self.drop(n)
                except redis.exceptions.RedisError as exc:
                    log.warning("lease heartbeat failed org_id=%s: %s", lease.org_id, exc)


_heartbeats: tuple[int, _Heartbeat] | None = None
_heartbeats_lock = threading.Lock()


def _heartbeat() -> _Heartbeat:
    """This process's heartbeat thread (started again in a forked child, which has none)."""
    global _heartbeats  # noqa: PLW0603 - one heartbeat thread per process, on purpose
    with _heartbeats_lock:
        if _heartbeats is None or _heartbeats[0] != os.getpid():
            thread = _Heartbeat()
            thread.start()
            _heartbeats = (os.getpid(), thread)
        return _heartbeats[1]


def _malformed(state: OrgState, exc: changes.MalformedRecord) -> MalformedResponse:
    return MalformedResponse(f"org {state.org_id} {state.resource}: malformed record: {exc}")


class Poller:
    """Polls orgs with an :class:`EventTempleClient` and records changes in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        api: EventTempleClient,
        *,
        lease_ttl: float = LEASE_TTL,
        hooks: Hooks | None = None,
        slice_seconds: float = SWEEP_SLICE,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.redis = client
        self.settings = settings
        self.ks = settings.keyspace
        self.api = api
        self.lease_ttl = lease_ttl
        # ETBRIDGE_REDIS_WAIT_REPLICAS: page commits wait for that many replicas (issue 17).
        self._wait = (settings.redis_wait_replicas, int(settings.redis_wait_timeout * 1000))
        self.hooks = hooks or Hooks()
        self.slice = slice_seconds
        self.now = now
        self.ignore = frozenset(settings.ignore_fields)

    # --- entry point -------------------------------------------------------------

    def poll(
        self,
        org_id: str,
        mode: Mode = "incremental",
        *,
        resources: Sequence[str] | None = None,
        max_pages: int | None = None,
    ) -> list[PollResult]:
        """Poll resources of one org (all configured ones by default); skip if it is leased.

        ``max_pages`` bounds a sweep: it commits that many pages, saves its
        cursor and returns, and the planner sends its next page when it is due.
        """
        chosen = list(resources or self.settings.resources)
        first = OrgState(self.redis, self.ks, org_id, chosen[0], wait=self._wait)
        # The first resource's meta comes with the lease: one round trip for both.
        acquired = first.acquire_lease_with_meta(self.lease_ttl)
        if acquired is None:
            return [PollResult(org_id, res, mode, skipped="leased") for res in chosen]
        lease, meta = acquired
        heartbeat = _heartbeat()
        held = heartbeat.hold(first, lease)
        released = False
        try:
            if self.hooks.on_started is not None:
                self.hooks.on_started()
            results = []
            for n, res in enumerate(chosen):
                state = (
                    first if n == 0 else OrgState(self.redis, self.ks, org_id, res, wait=self._wait)
                )
                result, released = self._poll_resource(
                    state,
                    lease,
                    mode,
                    max_pages,
                    meta=meta if n == 0 else state.meta(),
                    release=n == len(chosen) - 1,
                )
                results.append(result)
            return results
        finally:
            heartbeat.drop(held)
            if not released:
                first.release_lease(lease)

    # --- one resource --------------------------------------------------------------

    def _poll_resource(
        self,
        state: OrgState,
        lease: Lease,
        mode: Mode,
        max_pages: int | None,
        *,
        meta: dict[str, str],
        release: bool,
    ) -> tuple[PollResult, bool]:
        """Poll one resource with ``meta`` as read under the lease; True with the result
        when ``release`` (the poll's last resource) let its final commit release the lease."""
        started = time.monotonic()
        released = False
        baseline = meta.get("baselined") != "1"
        if baseline or meta.get("filter_unsupported") == "1" or meta.get("resync") == "1":
            mode = "sweep"
        result = PollResult(state.org_id, state.resource, mode)
        try:
            if mode == "incremental":
                try:
                    # (An org coming back from lost access is marked accessible after
                    # the scan, still under its lease.)
                    released = self._scan(
                        state,
                        lease,
                        meta,
                        result,
                        baseline=False,
                        sweep=False,
                        release=release and not meta.get("inaccessible_since"),
                    )
                except FilterRejected as exc:
                    log.warning(
                        "incremental filter rejected org_id=%s resource=%s: %s; polling by sweeps",
                        state.org_id,
                        state.resource,
                        exc,
                    )
                    state.set_meta(filter_unsupported="1")
                    result.mode = "sweep"
                    self._scan(
                        state, lease, state.meta(), result, baseline=False, sweep=True, max_pages=1
                    )
            else:
                self._scan(
                    state, lease, meta, result, baseline=baseline, sweep=True, max_pages=max_pages
                )
        except Exception as exc:
            # The failure itself is recorded once, by the task (planstore.record_failure).
            if confirmations.lost_access(exc, baselined=not baseline):
                # Lost access is not deletion: keep the state, emit nothing, back off.
                status = getattr(exc, "status", 0)
                if holds.mark_inaccessible(
                    self.redis, self.ks, state.org_id, state.resource, str(exc)
                ):
                    raise confirmations.alert_access_lost(
                        state.org_id, str(exc), f"http_{status}"
                    ) from exc
                raise AccessLost(f"org {state.org_id} still inaccessible: {exc}") from exc
            raise
        if meta.get("inaccessible_since"):
            since = holds.mark_accessible(self.redis, self.ks, state.org_id, state.resource)
            if since is not None:
                confirmations.note_access_back(state.org_id, since, time.time())
        result.ms = (time.monotonic() - started) * 1000
        log.info(
            "poll done org_id=%s resource=%s mode=%s pages=%d records=%d changes=%d "
            "deleted=%d ms=%.0f",
            result.org_id,
            result.resource,
            result.mode,
            result.pages,
            result.records,
            result.events,
            result.deleted,
            result.ms,
        )
        return result, released

    def _scan(  # noqa: C901, PLR0912, PLR0915 - the page loop in order (docs/page-commit.md)
        self,
        state: OrgState,
        lease: Lease,
        meta: dict[str, str],
        result: PollResult,
        *,
        baseline: bool,
        sweep: bool,
        max_pages: int | None = None,
        release: bool = False,
    ) -> bool:
        """Scan and commit; True when ``release`` let the final commit release the lease
        (incremental scans only)."""
        resume: str | None = None
        since: datetime | None = None
        if sweep:
            if meta.get("sweep_active") == "1" and meta.get("sweep_cursor"):
                resume = meta["sweep_cursor"]
            else:
                state.reset_sweep()
                state.set_meta(sweep_active="1", sweep_started_at=str(time.time()))
        else:
            since = watermark.since(
                events.parse_timestamp(meta.get("watermark")), self.settings.lookback
            )
        sweep_active = sweep or meta.get("sweep_active") == "1"
        scan_max = events.parse_timestamp(meta.get("scan_max")) if resume else None
        known, absorbed = pagediff.schema_memory(meta)

        scan_started = time.monotonic()
        paused = False
        try:
            paginator = self.api.pages(
                state.org_id,
                state.resource,
                updated_after=since,
                after=resume,
                page_size=self.settings.page_size,
            )
            pages = iter(paginator)
            while True:
                if shutdown.requested():
                    paused = True  # SIGTERM: stop at this page boundary; resumed elsewhere
                    break
                page = next(pages, None)
                if page is None:
                    break
                records = page.data  # as served: commit_page makes canonical what it diffs
                scan_max = watermark.newest(scan_max, watermark.page_max(records))
                meta_updates: dict[str, str] = {}
                if sweep:
                    meta_updates["sweep_cursor"] = page.next_cursor or ""
                    if scan_max is not None:
                        meta_updates["scan_max"] = rfc3339(scan_max)
                if records or meta_updates:
                    # (An empty page of an incremental poll, the common answer, has
                    # nothing to commit: the final commit checks the lease.)
                    known, absorbed = self.commit_page(
                        state,
                        lease,
                        records,
                        result,
                        baseline=baseline,
                        seen=sweep_active,
                        known=known,
                        absorbed=absorbed,
                        meta_updates=meta_updates,
                    )
                result.pages += 1
                result.records += len(records)
                if (
                    sweep
                    and page.next_cursor
                    and (
                        (max_pages is not None and result.pages >= max_pages)
                        or time.monotonic() - scan_started > self.slice
                    )
                ):
                    # The sweep yields its worker; the planner sends its next page when due.
                    paused = True
                    break
        except (FatalError, RepeatedCursor) as exc:
            if resume is not None and not isinstance(exc, FilterRejected):
                # A saved cursor the API no longer accepts (or walks in a circle from):
                # start the sweep over next time.
                state.set_meta(sweep_active="", sweep_cursor="")
            raise

        now = self.now()
        if paused:
            state.commit(lease, CommitPlan(meta={"last_poll_at": str(now.timestamp())}))
            log.info(
                "sweep paused org_id=%s resource=%s pages=%d (resumes from its cursor)",
                state.org_id,
                state.resource,
                result.pages,
            )
            return False
        final = {
            "last_poll_at": str(now.timestamp()),
            "last_poll_mode": result.mode,
            "last_error": "",
        }
        new_mark = watermark.advance(events.parse_timestamp(meta.get("watermark")), scan_max, now)
        if new_mark is not None:
            final["watermark"] = rfc3339(new_mark)
        if sweep:
            settlement.finish_sweep(self, state, lease, result, final, now)
            release = False
        else:
            state.commit(lease, CommitPlan(meta=final, release=release))
        result.complete = True
        return release

    def canonical_page(self, state: OrgState, data: Sequence[Any]) -> list[dict[str, Any]]:
        # Duplicate ids were refused by the paginator (client.parse_page) already.
        try:
            return [changes.canonical(item) for item in data]
        except changes.MalformedRecord as exc:
            raise _malformed(state, exc) from None

    def stored(self, records: dict[str, dict[str, Any]]) -> dict[str, changes.Stored]:
        """State's records as :class:`~etbridge.changes.Stored` (fingerprints: the ignore list)."""
        return {
            i: changes.Stored(fingerprint=changes.fingerprint(rec, self.ignore), record=rec)
            for i, rec in records.items()
        }

    def envelope_json(self, org_id: str, change: changes.Change, detected_at: datetime) -> str:
        return events.to_json(
            events.envelope(
                org_id,
                change,
                detected_at=detected_at,
                ignore_fields=self.ignore,
                app=self.settings.app,
            )
        )

    def commit_page(  # noqa: PLR0913 - the page's parts, each named at the call
        self,
        state: OrgState,
        lease: Lease,
        records: Sequence[Any],
        result: PollResult,
        *,
        baseline: bool,
        seen: bool,
        known: set[str],
        absorbed: set[str],
        meta_updates: dict[str, str],
    ) -> tuple[set[str], set[str]]:
        """Diff and commit one page (records as served, or canonical); return the schema memory.

        Re-reads and re-diffs the page when another writer moved a record under it.
        """
        try:
            ids, digests, canon = digest.page_digests(records)
        except changes.MalformedRecord as exc:
            raise _malformed(state, exc) from None
        page: list[dict[str, Any]] | None = None  # canonical, made when a record moved
        for _attempt in range(_MAX_CONFLICTS):
            blobs = state.read(ids)
            # A value stored before format 3 carries no digest: it is diffed like a moved
            # record, which emits nothing when it is equal, and rewritten (docs/page-commit.md).
            moved = [i for i in ids if stored_digest(blobs[i]) != digests[i]]
            if not moved and not seen and not meta_updates:
                # The lookback's overlap, unchanged: nothing to write, so no commit
                # (the poll's final commit checks the lease).
                return known, absorbed
            plan = CommitPlan(
                checks={i: check_value(b) for i, b in blobs.items()},
                seen=ids if seen else [],
                meta=dict(meta_updates),
            )
            new_known, new_absorbed = known, absorbed
            detected_at = self.now()
            if moved:
                if page is None:
                    # The schema-drift step reads the whole page: all of it canonical.
                    page = [
                        canon.get(i) or self.canonical_page(state, [r])[0]
                        for i, r in zip(ids, records, strict=True)
                    ]
                stored = self.stored(state.decode({i: blobs[i] for i in moved}))
                diff = pagediff.diff_page(
                    state.resource,
                    page,
                    {i: stored.get(i) for i in moved},
                    self.ignore,
                    known=known,
                    absorbed=absorbed,
                    baseline=baseline,
                    emit_baseline=self.settings.emit_baseline,
                )
                if diff.drift is not None:
                    plan.events.append(
                        events.to_json(
                            events.schema_envelope(
                                state.org_id,
                                diff.drift,
                                detected_at=detected_at,
                                app=self.settings.app,
                            )
                        )
                    )
                for change in diff.changes:
                    plan.events.append(self.envelope_json(state.org_id, change, detected_at))
                    result.counts[change.op] = result.counts.get(change.op, 0) + 1
                for rec in diff.writes:
                    plan.writes[rec["id"]] = (digests[rec["id"]], rec)
                plan.meta.update(diff.meta)
                if diff.changes:
                    plan.meta["last_change_at"] = str(time.time())
                new_known, new_absorbed = diff.known, diff.absorbed
            try:
                appended = state.commit(lease, plan)
            except CommitConflict:
                continue
            result.events += appended
            if appended and self.hooks.on_events is not None:
                self.hooks.on_events(state.org_id)
            return new_known, new_absorbed
        raise MalformedResponse(
            f"org {state.org_id} {state.resource}: records kept moving during the commit"
        )
