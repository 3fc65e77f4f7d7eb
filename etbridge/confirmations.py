"""The I/O edge of deletion safety: confirmation GETs, and the alerts of holds and lost access.

:func:`confirm` asks ``GET /v2/bookings/{id}`` through the client, so every
confirmation takes a slot of the fleet's budget (the planner keeps their
expected rate out of its allocation, docs/scheduling.md): 404/410 is
:attr:`Verdict.GONE`, 200 :attr:`Verdict.EXISTS` with the record, anything
else :attr:`Verdict.UNKNOWN`; the first retriable failure or a spent budget
leaves the remaining ids unknown. A 403 on the org header
propagates: that is lost access, not an answer about one booking. Alerts are a
warning log line, a (scrubbed) Sentry message and a metric, once per episode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sentry_sdk

from etbridge import metrics
from etbridge.client import EventTempleClient
from etbridge.deletions import Verdict
from etbridge.errors import AccessLost, FatalError, RateLimited, RetriableError

log = logging.getLogger("etbridge.deletions")

# Statuses of a listing that mean the org header is refused: lost access, never deletion.
LOST_ACCESS_STATUSES = (403, 404)

Answers = dict[str, tuple[Verdict, dict[str, Any] | None]]


def confirm(
    api: EventTempleClient,
    org_id: str,
    resource: str,
    ids: Sequence[str],
) -> Answers:
    """The verdict of ``GET /v2/{resource}/{id}`` for each id (with the record when it exists)."""
    out: Answers = {}
    for rid in ids:
        try:
            record = api.get_one(org_id, resource, rid)
        except RateLimited as exc:
            log.info("deletion confirmations wait for the budget org_id=%s: %s", org_id, exc)
            break
        except RetriableError as exc:
            log.warning("deletion confirmation failed org_id=%s id=%s: %s", org_id, rid, exc)
            break
        except FatalError as exc:
            if exc.status == 403:
                raise
            log.warning("deletion confirmation refused org_id=%s id=%s: %s", org_id, rid, exc)
            out[rid] = (Verdict.UNKNOWN, None)
            continue
        out[rid] = (Verdict.GONE, None) if record is None else (Verdict.EXISTS, record)
    for rid in ids:
        out.setdefault(rid, (Verdict.UNKNOWN, None))
    return out


def lost_access(exc: BaseException, baselined: bool) -> bool:
    """Whether a poll's failure means the org's header is refused (for an org polled before)."""
    return (
        baselined
        and isinstance(exc, FatalError)
        and exc.status in LOST_ACCESS_STATUSES
        # A rejected filter is a 400/422 about the query, never about the org.
        and type(exc) is FatalError
    )


def alert_hold(org_id: str, resource: str, count: int, stored: int, reason: str) -> None:
    """A new hold: one warning line, one Sentry message (scrubbed by before_send), a metric."""
    message = (
        f"deletions held org_id={org_id} resource={resource} count={count} stored={stored} "
        f"reason={reason}: nothing emitted; decide with `etbridge deletions approve|reject "
        f"{org_id}` (a sweep that lists them again clears the hold)"
    )
    log.warning(message)
    sentry_sdk.capture_message(message, level="warning")


def alert_access_lost(org_id: str, error: str, reason: str) -> AccessLost:
    """Lost access, new: log, Sentry, metric; returns the error the poll raises."""
    message = (
        f"org inaccessible org_id={org_id}: {error}; nothing emitted, state kept, "
        "polling resumes from the watermark when access returns"
    )
    log.warning(message)
    sentry_sdk.capture_message(message, level="warning")
    metrics.record_access_lost(reason)
    return AccessLost(f"org {org_id} inaccessible: {error}")


def note_access_back(org_id: str, since: float, now: float) -> None:
    log.warning(
        "org accessible again org_id=%s after %.0fs; polling resumes from its watermark",
        org_id,
        now - since,
    )
