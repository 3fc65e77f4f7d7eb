"""The outbox relay: from each org's outbox stream to every sink, in order, at least once.

One module per concept: :mod:`.locking` (partition locks), :mod:`.due` (the
due set), :mod:`.relay` (the relay loop), :mod:`.deadletters`,
:mod:`.replay`, :mod:`.retention` (trim), :mod:`.sinkstate` (disabled
sinks), :mod:`.report` (status); outcomes are :class:`Outcome`. The
protocol, its Redis keys and failure cases: ``docs/relay.md``. Callers use
this package's names (``outbox.Relay``, ``outbox.trim``, ``outbox.BUDGET``).
"""

from __future__ import annotations

from etbridge.outbox.deadletters import DeadLetter, dlq_lines, dlq_list, dlq_redeliver
from etbridge.outbox.deadletters import expire as expire_dead_letters
from etbridge.outbox.deadletters import purge as dlq_purge
from etbridge.outbox.due import ENQUEUE_LEASE, SWEEP_EVERY, due_member
from etbridge.outbox.locking import CLAIM_MARGIN, Partition
from etbridge.outbox.outcomes import DeliveryResult, Outcome
from etbridge.outbox.relay import MAX_EVENTS, MAX_SECONDS, Relay
from etbridge.outbox.replay import replay
from etbridge.outbox.report import status
from etbridge.outbox.retention import trim
from etbridge.outbox.schedule import JITTER, next_delay, retry_schedule
from etbridge.outbox.sinkstate import enable_sink
from etbridge.outbox.streams import group_name, resolve_sink, wants_org

# The outcomes under their old names (tasks, tests and metrics compare with these).
CAUGHT_UP = Outcome.CAUGHT_UP
BUDGET = Outcome.BUDGET
RETRY = Outcome.RETRY
WAITING = Outcome.WAITING
PACED = Outcome.PACED
BUSY = Outcome.BUSY
DISABLED = Outcome.DISABLED
FILTERED = Outcome.FILTERED
LOST = Outcome.LOST
UNKNOWN = Outcome.UNKNOWN
_Partition = Partition

__all__ = [
    "BUDGET",
    "BUSY",
    "CAUGHT_UP",
    "CLAIM_MARGIN",
    "DISABLED",
    "ENQUEUE_LEASE",
    "FILTERED",
    "JITTER",
    "LOST",
    "MAX_EVENTS",
    "MAX_SECONDS",
    "PACED",
    "RETRY",
    "SWEEP_EVERY",
    "UNKNOWN",
    "WAITING",
    "DeadLetter",
    "DeliveryResult",
    "Outcome",
    "Partition",
    "Relay",
    "dlq_lines",
    "dlq_list",
    "dlq_purge",
    "dlq_redeliver",
    "due_member",
    "enable_sink",
    "expire_dead_letters",
    "group_name",
    "next_delay",
    "replay",
    "resolve_sink",
    "retry_schedule",
    "status",
    "trim",
    "wants_org",
]
