"""The relay loop: one (org, sink) partition's pending events to its sink, in order.

:class:`Relay` is what the ``deliver`` task and beat's tick call. One run
holds the partition's lock (:mod:`.locking`), reclaims what a dead relay
left, reads new entries through the sink's consumer group, sends them in
commit order (batched where the sink takes batches), and records a failure's
retry time (:mod:`.retrystate`) and the due set (:mod:`.due`); the last
failure dead-letters (:mod:`.deadletters`). ``order=none`` lets later events
pass a failing one; ``rate=`` paces the sink (:mod:`.pacing`); the breaker
disables a sink failing for ``disable_after`` (:mod:`.sinkstate`). It sleeps
only to keep a ``rate=`` (:mod:`.sending`). See ``docs/relay.md``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import redis

from etbridge.errors import FatalError
from etbridge.outbox.due import SWEEP_EVERY, DueSet, due_member, split_member
from etbridge.outbox.locking import CLAIM_MARGIN, LockScripts, Partition
from etbridge.outbox.outcomes import DeliveryResult, Outcome
from etbridge.outbox.pacing import burst
from etbridge.outbox.retrystate import RetryState
from etbridge.outbox.schedule import retry_schedule
from etbridge.outbox.sending import DEAD, NEXT, SINGLE, Sender
from etbridge.outbox.sinkcache import SinkCache
from etbridge.outbox.sinkstate import (
    disabled_names,
    is_disabled,
    record_run,
)
from etbridge.outbox.streams import event_body, text, wants_org
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import OutboxEvent, Sink, route

if TYPE_CHECKING:
    import celery
    import requests

log = logging.getLogger("etbridge.outbox")

# A deliver() call stops after this long (and is enqueued again), so one
# partition with a backlog does not hold a worker from the others.
MAX_SECONDS: Final = 10.0
MAX_EVENTS: Final = 2000

# How _process sees an entry (_LATER: order=none, its retry is not due), and
# what _attempt tells it (_NEXT: order=none, failed; go on with the next one).
_SEND, _SKIP, _GONE, _POISON, _LATER = "send", "skip", "gone", "poison", "later"


class Relay:
    """Delivers the outbox of each org to each configured sink.

    One instance per process (it caches sink connections). ``deliver`` is
    what a Celery ``deliver(org_id, sink_name)`` task calls; ``due`` is what
    beat's tick calls to know which tasks to enqueue.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        *,
        broker_app: celery.Celery | None = None,
        session: requests.Session | None = None,
        claim_margin: float = CLAIM_MARGIN,
        sweep_every: float = SWEEP_EVERY,
        consumer: str | None = None,
        sinks: Mapping[str, Sink] | None = None,
    ) -> None:
        self.redis = redis_client
        self.settings = settings
        self.ks = settings.keyspace
        self.broker_app = broker_app
        self.session = session
        self.claim_idle = settings.webhook_timeout + claim_margin
        self.claim_idle_ms = int(self.claim_idle * 1000)
        self.sweep_every = sweep_every
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.specs = {spec.name: spec for spec in settings.sinks}
        self.sinks = SinkCache(
            redis_client, settings, broker_app=broker_app, session=session, sinks=sinks
        )
        self.locks = LockScripts(redis_client)
        self.due_set = DueSet(redis_client, self.ks)
        self.sender = Sender(redis_client, settings, self.due_set)
        self._groups: set[tuple[str, str]] = set()

    # -- wiring ---------------------------------------------------------------

    def spec(self, sink: str | SinkSpec) -> SinkSpec:
        """The configured sink named ``sink`` (its ``name``), or the spec itself."""
        if isinstance(sink, SinkSpec):
            return sink
        try:
            return self.specs[sink]
        except KeyError:
            raise KeyError(f"no configured sink is named {sink!r}") from None

    def sink(self, spec: SinkSpec) -> Sink:
        """The (cached) sink object for a spec."""
        return self.sinks.get(spec)

    def close(self) -> None:
        """Close the connections of the sinks this relay opened."""
        self.sinks.close()

    # -- scheduling -------------------------------------------------------------

    def notify(self, org_id: str, now: float | None = None) -> list[tuple[str, str]]:
        """Mark an org's partitions due now (the poller calls this after a commit).

        Returns the partitions that are due now and not already handed out, so
        the caller may enqueue their ``deliver`` tasks at once (low latency)
        instead of waiting for the next tick. Partitions waiting for a retry
        keep their time.
        """
        now = time.time() if now is None else now
        members = [
            due_member(org_id, spec.name) for spec in self.specs.values() if wants_org(spec, org_id)
        ]
        return self.due_set.notify(members, now)

    def due(self, now: float | None = None, *, limit: int = 1000) -> list[tuple[str, str]]:
        """The (org_id, sink_name) partitions to enqueue a ``deliver`` task for now.

        Those whose time has come in the due set (leased for
        :data:`ENQUEUE_LEASE` so the next tick does not repeat them), plus,
        once per ``sweep_every`` in the whole fleet, partitions with pending
        events that nobody scheduled.
        """
        now = time.time() if now is None else now
        taken = self.due_set.take(now, limit)
        disabled = disabled_names(self.redis, self.ks, self.specs)
        out: list[tuple[str, str]] = []
        stale: list[str] = []
        for member in taken:
            org_id, sink_name = split_member(member)
            if sink_name not in self.specs or sink_name in disabled:
                stale.append(member)
            else:
                out.append((org_id, sink_name))
        if stale:
            # Unknown sinks (removed from the config) and disabled ones are not
            # scheduled; enable_sink() marks a re-enabled sink's orgs due again.
            self.due_set.remove(*stale, retries=True)
        if self.due_set.sweep_turn(self.sweep_every):
            seen = set(out)
            specs = [s for s in self.specs.values() if s.name not in disabled]
            out += [p for p in self.due_set.unscheduled(specs, now) if p not in seen]
        return out

    def leftover(self, now: float | None = None) -> list[tuple[str, str]]:
        """Partitions with pending events nobody scheduled, now (not once a sweep).

        For a removed application's relay, which drains what is left (tasks.py).
        """
        now = time.time() if now is None else now
        disabled = disabled_names(self.redis, self.ks, self.specs)
        specs = [s for s in self.specs.values() if s.name not in disabled]
        return self.due_set.unscheduled(specs, now)

    def waiting(self) -> int:
        """Partitions in the due and retry sets (handed out, due, or waiting for a retry)."""
        return int(self.redis.zcard(self.ks.relay_due)) + int(self.redis.zcard(self.ks.relay_retry))

    def _schedule(self, member: str, at: float) -> None:
        self.due_set.schedule(member, at)

    # -- delivery -------------------------------------------------------------------

    def deliver(
        self,
        org_id: str,
        sink: str | SinkSpec,
        *,
        max_events: int = MAX_EVENTS,
        max_seconds: float = MAX_SECONDS,
    ) -> DeliveryResult:
        """Deliver the org's pending events to one sink, in commit order.

        Runs until caught up, until ``max_events``/``max_seconds`` are used
        (then the partition is due again at once), or until an attempt fails
        (then its retry time is recorded and later events of this org wait,
        for this sink only). Returns at once when another relay holds the
        partition, when its retry time has not come, or when the sink is
        disabled. With ``order=none`` a failed event waits for its own retry
        while the later ones go on.
        """
        if isinstance(sink, str) and sink not in self.specs:
            # A task from before a configuration change: that sink is gone.
            self.due_set.remove(due_member(org_id, sink), retries=True)
            log.warning("deliver for an unknown sink name=%s org_id=%s", sink, org_id)
            return DeliveryResult(org_id, sink, outcome=Outcome.UNKNOWN)
        spec = self.spec(sink)
        result = DeliveryResult(org_id, spec.name)
        member = due_member(org_id, spec.name)
        if not wants_org(spec, org_id):
            self.due_set.remove(member, retries=True)
            result.outcome = Outcome.FILTERED
            return result
        if is_disabled(self.redis, self.ks, spec.name):
            self.due_set.remove(member, retries=True)
            result.outcome = Outcome.DISABLED
            return result
        part = Partition(self, org_id, spec)
        left = part.acquire()
        if left:
            # The holder reads again before it lets go (the note acquire left).
            # Should it have died, the partition is due when its lock expires;
            # LT: never later than it is already scheduled (e.g. a budget stop).
            result.outcome = Outcome.BUSY
            result.next_at = time.time() + left / 1000
            self.due_set.schedule_no_later(member, result.next_at)
            return result
        started = time.monotonic()
        try:
            self._run(part, result, max_events, started + max_seconds)
        finally:
            try:
                part.release()
            finally:
                self._record(spec, result, time.monotonic() - started)
        return result

    def _ensure_group(self, part: Partition) -> None:
        marker = (part.org_id, part.spec.name)
        if marker in self._groups:
            return
        try:
            # From the start of the outbox: an event committed before this sink's
            # first relay ran is still delivered (a newly added sink receives
            # the retained history, as Kafka's earliest offset would).
            self.redis.xgroup_create(part.stream, part.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(marker)

    def _pending_head(self, part: Partition) -> dict[str, Any] | None:
        try:
            rows = self.redis.xpending_range(part.stream, part.group, "-", "+", 1)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream was deleted and made anew: make the group again.
            self._groups.discard((part.org_id, part.spec.name))
            self._ensure_group(part)
            rows = self.redis.xpending_range(part.stream, part.group, "-", "+", 1)
        return dict(rows[0]) if rows else None

    # One partition turn, step by step as docs/relay.md tells it; left whole to the delivery issue.
    def _run(  # noqa: C901, PLR0912
        self, part: Partition, result: DeliveryResult, max_events: int, deadline: float
    ) -> None:
        self._ensure_group(part)
        fields = {text(k): text(v) for k, v in self.redis.hgetall(part.state_key).items()}
        state = RetryState(fields, strict=part.spec.order == "strict")
        part.deadline = deadline
        now = time.time()
        next_at = state.partition_next_at()
        if next_at > now:
            result.outcome = Outcome.WAITING
            result.next_at = next_at
            self._schedule(part.member, next_at)
            return
        head = self._pending_head(part)
        if head is not None and int(head["time_since_delivered"]) < self.claim_idle_ms:
            # An attempt of a relay that died may still be in flight: wait until
            # it certainly is over, then reclaim (never overlap two attempts).
            wait = (self.claim_idle_ms - int(head["time_since_delivered"])) / 1000
            result.outcome = Outcome.WAITING
            result.next_at = now + wait
            self._schedule(part.member, result.next_at)
            return
        sink = self.sink(part.spec)
        read_count = max(10, sink.max_batch)
        from_pending = head is not None
        removed_from_due = False
        processed = 0
        while True:
            if processed >= max_events or time.monotonic() >= deadline:
                result.outcome = Outcome.BUDGET
                self._schedule(part.member, time.time())
                return
            count = min(read_count, max_events - processed)
            if from_pending:
                entries = self._claim(part, count)
                if not entries:
                    from_pending = False
                    continue
            else:
                entries = self._read(part, count)
                if not entries:
                    if not removed_from_due:
                        # Caught up: leave the due set, then look once more, so an
                        # event committed (and notified) meanwhile is not left behind:
                        # its notify either came before this (the read sees the event)
                        # or finds the partition absent and enqueues a task...
                        self.due_set.remove(part.member)
                        removed_from_due = True
                        continue
                    # ...whose acquire either finds the lock free, or leaves the note
                    # that finish() sees: then read again.
                    finished = part.finish()
                    if finished == 1:
                        result.outcome = Outcome.CAUGHT_UP
                        if not state.strict:
                            # Failed events wait in the retry set, never in the due set.
                            self.due_set.schedule_retry(part.member, part.earliest_retry)
                        return
                    if finished < 0:
                        result.outcome = Outcome.LOST
                        return
                    continue
            removed_from_due = False
            processed += len(entries)
            if not self._process(part, sink, entries, state, result):
                return

    def _claim(self, part: Partition, count: int) -> list[tuple[str, Any]]:
        answer = self.redis.xautoclaim(
            part.stream,
            part.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=count,
        )
        entries = [(text(i), f) for i, f in answer[1] if i is not None]
        part.held += [i for i, _ in entries]
        return entries

    def _read(self, part: Partition, count: int) -> list[tuple[str, Any]]:
        answer: Any = self.redis.xreadgroup(
            part.group, self.consumer, {part.stream: ">"}, count=count
        )
        # RESP2 answers [[stream, rows]], RESP3 {stream: [rows]}.
        streams = answer.values() if isinstance(answer, dict) else [r for _, r in answer or []]
        entries: list[tuple[str, Any]] = []
        for found in streams:
            rows = found[0] if found and isinstance(found[0], list) else found
            entries += [(text(i), f) for i, f in rows]
        part.held += [i for i, _ in entries]
        return entries

    # The batch protocol (docs/relay.md) in order; left whole to the delivery issue.
    def _process(  # noqa: C901, PLR0911, PLR0912, PLR0915
        self,
        part: Partition,
        sink: Sink,
        entries: Sequence[tuple[str, Any]],
        state: RetryState,
        result: DeliveryResult,
    ) -> bool:
        """Send a batch of entries in order. False: stop this run (outcome set)."""
        spec = part.spec
        schedule = retry_schedule(spec, self.settings)
        first_wait = schedule[0] if schedule else 0.0
        events: list[OutboxEvent] = []
        kinds: list[str] = []
        now = time.time()
        for entry_id, fields in entries:
            event = OutboxEvent(event_body(fields), entry_id)
            events.append(event)
            kind = self._classify(spec, event, fields)
            if kind == _SEND and not state.strict:
                retry_at = state.entry_next_at(entry_id)
                if retry_at > now:
                    kind = _LATER  # stays held (parked on release) until its retry
                    part.note_retry(retry_at)
            kinds.append(kind)
            if kind == _SKIP:
                result.skipped += 1

        def delayed(event: OutboxEvent) -> float | None:
            # The first attempt waits the schedule's first value after the commit.
            if first_wait <= 0 or state.tried(event.entry_id):
                return None
            at = event.committed_at + first_wait
            return at if at > time.time() else None

        ack: list[str] = []  # entries that need no sending: acked with the next settle
        batch_limit = sink.max_batch if not spec.rate else min(sink.max_batch, burst(spec))
        i = 0
        while i < len(events):
            kind, event = kinds[i], events[i]
            if kind in (_SKIP, _GONE):
                ack.append(event.entry_id)
                i += 1
                continue
            if kind == _LATER:
                i += 1
                continue
            if kind == _POISON:
                # Not an event envelope: no attempt can fix it.
                error = f"outbox entry {event.entry_id} is not an event envelope"
                if not self.sender.dead_letter(part, event, 0, error, ack, result, state):
                    result.outcome = Outcome.LOST
                    return False
                ack = []
                i += 1
                continue
            wait_until = delayed(event)
            if wait_until is not None:
                if not part.settle(ack, {}):
                    result.outcome = Outcome.LOST
                    return False
                result.outcome = Outcome.WAITING
                result.next_at = wait_until
                self._schedule(part.member, wait_until)
                return False
            chunk: list[OutboxEvent] = []
            j = i
            while j < len(events) and len(chunk) < batch_limit:
                if kinds[j] in (_SKIP, _GONE):
                    # Acking a filtered entry early is harmless: it is never sent.
                    ack.append(events[j].entry_id)
                elif kinds[j] in (_POISON, _LATER) or (chunk and delayed(events[j]) is not None):
                    break
                else:
                    chunk.append(events[j])
                j += 1
            if spec.rate and not self.sender.pace(part, len(chunk), ack, result):
                return False
            outcome = self.sender.attempt(part, sink, chunk, ack, state, schedule, result)
            if outcome is None:
                ack = []
                i = j
            elif outcome == SINGLE:
                # A chunk of several failed for good (or, with order=none, at all):
                # find the culprit one by one.
                batch_limit = 1
            elif outcome in (DEAD, NEXT):
                ack = []
                i = events.index(chunk[0]) + 1
            else:
                return False
        if ack and not part.settle(ack, {}):
            result.outcome = Outcome.LOST
            return False
        return True

    @staticmethod
    def _classify(spec: SinkSpec, event: OutboxEvent, fields: Any) -> str:
        if fields is None:
            return _GONE  # deleted while pending
        if not event.body:
            return _POISON
        try:
            # Parsed even without a filter: a body that is not an envelope must
            # not reach consumers (and a webhook needs its id).
            envelope = event.envelope
        except FatalError:
            return _POISON
        return _SEND if spec.filter.is_empty or route(spec.filter, envelope) else _SKIP

    def _record(self, spec: SinkSpec, result: DeliveryResult, elapsed: float) -> None:
        record_run(self.redis, self.ks, spec, result.delivered, result.dead_lettered)
        if result.delivered or result.skipped or result.dead_lettered or result.error:
            log.info(
                "delivery org_id=%s sink=%s outcome=%s delivered=%d skipped=%d "
                "dead_lettered=%d ms=%.1f",
                result.org_id,
                spec.display,
                result.outcome,
                result.delivered,
                result.skipped,
                result.dead_lettered,
                elapsed * 1000,
            )
