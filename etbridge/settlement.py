"""Settling a complete sweep: confirm, hold or announce the bookings it did not list.

The I/O half of deletion safety, run by the poller at the end of a sweep that
reached its last page: the decisions are :mod:`etbridge.deletions` (pure), the
GETs :mod:`etbridge.confirmations`, the hold :mod:`etbridge.holds`. The
protocol, its Redis keys and failure cases: docs/deletions.md.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from etbridge import changes, confirmations, deletions, holds, metrics, pagediff
from etbridge.state import CommitPlan, Lease, OrgState, check_value

if TYPE_CHECKING:
    from etbridge.poller import Poller, PollResult

log = logging.getLogger("etbridge.poller")

# Deleted records are committed in chunks so one Lua call stays short.
_DELETE_CHUNK = 200


def finish_sweep(
    poller: Poller,
    state: OrgState,
    lease: Lease,
    result: PollResult,
    final: dict[str, str],
    now: datetime,
) -> None:
    """End a sweep that listed every page: settle the unlisted, store the sweep's marks."""
    done = dict(final)
    unseen = state.unseen_ids()
    hold = holds.read(poller.redis, poller.ks, state.org_id, state.resource)
    if unseen:
        pending = _settle_deletions(poller, state, lease, result, unseen, hold, now)
        done["deletions_pending"] = str(pending) if pending else ""
    else:
        done["deletions_pending"] = ""
        if hold is not None and holds.clear(poller.redis, poller.ks, state.org_id, state.resource):
            log.info(
                "deletions hold cleared org_id=%s: the listing has every booking again",
                state.org_id,
            )
    done.update(
        last_sweep_at=str(now.timestamp()),
        baselined="1",
        sweep_active="",
        sweep_cursor="",
        scan_max="",
        resync="",
    )
    state.commit(lease, CommitPlan(meta=done))
    state.reset_sweep()


def _settle_deletions(
    poller: Poller,
    state: OrgState,
    lease: Lease,
    result: PollResult,
    unseen: set[str],
    hold: holds.Hold | None,
    now: datetime,
) -> int:
    """Confirm, hold or announce what a complete sweep did not list (docs/deletions.md).

    Returns the number of candidates left pending for the next sweep.
    """
    stored = state.count()
    p = deletions.plan(
        unseen,
        stored=stored,
        listed=state.seen_count(),
        guard=poller.settings.delete_guard,
        approved=hold.approved_ids if hold is not None else (),
    )
    if p.confirm and poller.hooks.on_confirming is not None:
        poller.hooks.on_confirming(len(p.confirm))
    answers = (
        confirmations.confirm(poller.api, state.org_id, state.resource, p.confirm)
        if p.confirm
        else {}
    )
    outcome = deletions.decide(p, {i: v for i, (v, _rec) in answers.items()})
    metrics.record_deletions(outcome.counts)
    if outcome.refresh:
        # The listing lied about these: store what the GET returned (an update if changed).
        known, absorbed = pagediff.schema_memory(state.meta())
        records = poller.canonical_page(state, [answers[i][1] for i in outcome.refresh])
        poller.commit_page(
            state,
            lease,
            records,
            result,
            baseline=False,
            seen=False,
            known=known,
            absorbed=absorbed,
            meta_updates={},
        )
    _commit_deletions(poller, state, lease, result, deletions.ordered(outcome.delete), now)
    if hold is not None and (p.hold is None or hold.approved_ids):
        holds.clear(poller.redis, poller.ks, state.org_id, state.resource)
        if p.hold is None and not hold.approved_ids:
            log.info(
                "deletions hold cleared org_id=%s: the guard no longer holds this sweep",
                state.org_id,
            )
    if p.hold is not None:
        fresh = holds.write(
            poller.redis,
            poller.ks,
            state.org_id,
            state.resource,
            outcome.held,
            reason=p.hold.value,
            stored=stored,
            now=now.timestamp(),
        )
        if fresh:
            confirmations.alert_hold(
                state.org_id, state.resource, len(outcome.held), stored, p.hold.value
            )
    return len(outcome.pending)


def _commit_deletions(
    poller: Poller, state: OrgState, lease: Lease, result: PollResult, ids: list[str], now: datetime
) -> None:
    for start in range(0, len(ids), _DELETE_CHUNK):
        chunk = ids[start : start + _DELETE_CHUNK]
        blobs = state.read(chunk)
        recs = state.decode(blobs)
        gone = changes.deletions(state.resource, poller.stored(recs), ())
        plan = CommitPlan(checks={i: check_value(blobs[i]) for i in recs}, deletes=list(recs))
        plan.events.extend(poller.envelope_json(state.org_id, c, now) for c in gone)
        if gone:
            plan.meta["last_change_at"] = str(time.time())
        appended = state.commit(lease, plan)
        result.events += appended
        result.deleted += len(gone)
        result.counts["deleted"] = result.counts.get("deleted", 0) + len(gone)
        if appended and poller.hooks.on_events is not None:
            poller.hooks.on_events(state.org_id)
