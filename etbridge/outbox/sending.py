"""Sending one chunk: the attempt, and what its outcome writes.

Accepted: ack and clear the retry state. Failed: the retry state (strict:
the partition waits; ``order=none``: the entry waits alone), the breaker,
the attempt log, or the dead-letter stream after the last retry. ``rate=``
is kept here too (:meth:`Sender.pace`), sleeping at most
:data:`MAX_PACE_SLEEP` in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Final

import redis

from etbridge.errors import EtbridgeError, FatalError, RetriableError
from etbridge.outbox import deadletters
from etbridge.outbox.attempts import AttemptLog
from etbridge.outbox.due import DueSet
from etbridge.outbox.locking import Partition
from etbridge.outbox.outcomes import DeliveryResult, Outcome
from etbridge.outbox.pacing import Pacer
from etbridge.outbox.retrystate import RetryState
from etbridge.outbox.schedule import next_delay
from etbridge.outbox.sinkstate import disable, note_failure, record_error
from etbridge.settings import Settings
from etbridge.sinks import OutboxEvent, Sink, SinkGone

log = logging.getLogger("etbridge.outbox")

# A paced run waits in-process at most this long for its next slot, else it
# stops and the partition is due when the pace allows.
MAX_PACE_SLEEP: Final = 1.0

# What attempt() tells the relay besides an Outcome (stop) or None (accepted):
# _DEAD the head was dead-lettered, go on; _SINGLE retry the chunk one by one;
# _NEXT (order=none) the head failed and waits alone, go on.
DEAD, SINGLE, NEXT = "dead", "single", "next"


class Sender:
    """Attempts chunks for the relay of one process."""

    def __init__(self, client: redis.Redis, settings: Settings, due_set: DueSet) -> None:
        self.redis = client
        self.settings = settings
        self.due_set = due_set
        self.pacer = Pacer(client, settings.keyspace)
        self.attempts = AttemptLog(client, settings)

    def pace(self, part: Partition, count: int, ack: list[str], result: DeliveryResult) -> bool:
        """Wait for the sink's ``rate=`` to allow ``count`` events; False: stop (PACED)."""
        wait = self.pacer.take(part.spec, count)
        while wait > 0:
            if wait > MAX_PACE_SLEEP or time.monotonic() + wait > part.deadline:
                if not part.settle(ack, {}):
                    result.outcome = Outcome.LOST
                    return False
                ack.clear()
                result.outcome = Outcome.PACED
                result.next_at = time.time() + wait
                self.due_set.schedule(part.member, result.next_at)
                return False
            time.sleep(wait)
            wait = self.pacer.take(part.spec, count)
        return True

    def attempt(
        self,
        part: Partition,
        sink: Sink,
        chunk: list[OutboxEvent],
        skip: list[str],
        state: RetryState,
        schedule: Sequence[float],
        result: DeliveryResult,
    ) -> str | None:
        """One attempt at a chunk. None: accepted; "dead"/"single": go on; else stop."""
        head = chunk[0]
        attempt_no = state.attempts(head.entry_id) + 1
        ids = [e.entry_id for e in chunk]
        if not part.extend(ids):
            result.outcome = Outcome.LOST
            return Outcome.LOST
        started = time.monotonic()
        try:
            try:
                if len(chunk) == 1:
                    sink.send(head, attempt_no)
                else:
                    sink.send_many(chunk, attempt_no)
            except Exception as exc:
                self._log_attempt(part, sink, chunk, attempt_no, started, exc)
                raise
        except SinkGone as exc:
            disable(self.redis, self.settings.keyspace, part.spec, str(exc))
            part.settle(skip, {"next_at": ""} if state.strict else {})
            result.outcome = Outcome.DISABLED
            result.error = str(exc)
            return Outcome.DISABLED
        except EtbridgeError as exc:
            return self._failed(part, chunk, skip, state, schedule, attempt_no, exc, result)
        except Exception as exc:
            # A bug in a sink must not spin: treat it as a failed attempt, with backoff.
            log.exception(
                "sink raised unexpectedly sink=%s org_id=%s", part.spec.display, part.org_id
            )
            error = RetriableError(f"{type(exc).__name__} in {type(sink).__name__}")
            return self._failed(part, chunk, skip, state, schedule, attempt_no, error, result)
        self._log_attempt(part, sink, chunk, attempt_no, started, None)
        if not part.settle([*skip, *ids], state.settled(ids)):
            result.outcome = Outcome.LOST
            return Outcome.LOST
        result.delivered += len(chunk)
        return None

    def _log_attempt(
        self,
        part: Partition,
        sink: Sink,
        chunk: Sequence[OutboxEvent],
        attempt_no: int,
        started: float,
        exc: BaseException | None,
    ) -> None:
        """One line per event in the attempt log (written before the ack or retry state)."""
        status = sink.last_status or ("accepted" if exc is None else "")
        if exc is not None:
            status = f"{type(exc).__name__} {status}".strip()
        excerpt = sink.last_excerpt if exc is None or sink.last_status else str(exc)
        self.attempts.record(
            part.org_id,
            part.spec.name,
            chunk,
            attempt_no,
            ok=exc is None,
            status=status,
            seconds=time.monotonic() - started,
            excerpt=excerpt,
        )

    # One return per failure kind.
    def _failed(  # noqa: PLR0911
        self,
        part: Partition,
        chunk: list[OutboxEvent],
        skip: list[str],
        state: RetryState,
        schedule: Sequence[float],
        attempt_no: int,
        exc: EtbridgeError,
        result: DeliveryResult,
    ) -> str:
        head = chunk[0]
        error = str(exc)
        if len(chunk) > 1 and (isinstance(exc, FatalError) or not state.strict):
            return SINGLE
        retry_after = exc.retry_after if isinstance(exc, RetriableError) else None
        delay = (
            None if isinstance(exc, FatalError) else next_delay(schedule, attempt_no, retry_after)
        )
        now = time.time()
        # Only failures a receiver's recovery can fix count for the breaker.
        if isinstance(exc, RetriableError) and note_failure(
            self.redis, self.settings.keyspace, part.spec, error, now
        ):
            # Every attempt failed for disable_after: stop trying (the breaker).
            days = (part.spec.disable_after or 0) / 86400
            disable(
                self.redis,
                self.settings.keyspace,
                part.spec,
                f"every attempt failed for {days:g} days: {error}",
            )
            part.settle(skip, {})
            result.outcome = Outcome.DISABLED
            result.error = error
            return Outcome.DISABLED
        if not isinstance(exc, RetriableError):
            record_error(self.redis, self.settings.keyspace, part.spec, error)
        if delay is None:
            if not self.dead_letter(part, head, attempt_no, error, skip, result, state):
                result.outcome = Outcome.LOST
                return Outcome.LOST
            return DEAD
        next_at = now + delay
        log.warning(
            "delivery failed org_id=%s sink=%s event=%s attempt=%d retry_in=%.1fs error=%s",
            part.org_id,
            part.spec.display,
            head.event_id,
            attempt_no,
            delay,
            error,
        )
        if not part.settle(skip, state.failed(head.entry_id, attempt_no, next_at, error, now)):
            result.outcome = Outcome.LOST
            return Outcome.LOST
        result.error = error
        if not state.strict:
            part.note_retry(next_at)
            return NEXT
        result.outcome = Outcome.RETRY
        result.next_at = next_at
        self.due_set.schedule(part.member, next_at)
        return Outcome.RETRY

    def dead_letter(
        self,
        part: Partition,
        event: OutboxEvent,
        attempts: int,
        error: str,
        skip: list[str],
        result: DeliveryResult,
        state: RetryState,
    ) -> bool:
        # The dead letter first, the ack second: a crash in between leaves a
        # duplicate dead letter, never a lost event.
        deadletters.add(self.redis, self.settings, part.spec, part.org_id, event, attempts, error)
        result.dead_lettered += 1
        return part.settle([*skip, event.entry_id], state.settled([event.entry_id]))
