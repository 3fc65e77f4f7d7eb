"""What one relay run did: the outcome enum and the result dataclass (read by tasks, metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How one :meth:`~etbridge.outbox.Relay.deliver` call ended (values are metric labels)."""

    CAUGHT_UP = "caught_up"  # nothing left to send
    BUDGET = "budget"  # stopped at max_events/max_seconds; due again now
    RETRY = "retry"  # an attempt failed; due again at next_at
    WAITING = "waiting"  # not due yet (retry time, first-attempt delay, in-flight entries)
    PACED = "paced"  # the sink's rate= is used up; due again when it allows more
    BUSY = "busy"  # another relay holds the partition
    DISABLED = "disabled"  # the sink is disabled (410 Gone, or failing for disable_after)
    FILTERED = "filtered"  # the sink's orgs= filter excludes this org
    LOST = "lost_lock"  # the lock expired under us; the new holder goes on
    UNKNOWN = "unknown_sink"  # no configured sink has this name (any more)


@dataclass
class DeliveryResult:
    """What one :meth:`~etbridge.outbox.Relay.deliver` call did."""

    org_id: str
    sink_name: str
    outcome: Outcome = Outcome.CAUGHT_UP
    delivered: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    next_at: float | None = None
    error: str | None = None
