"""The outbox relay: from each org's outbox stream to every sink, in order, at least once.

The poller appends each committed change event to the org's outbox (a Redis
stream, field ``event``) in the same atomic step that moves the stored
snapshot. This module takes them from there to the sinks.

Partitions and consumer groups
------------------------------
Every sink has its own consumer group (``sink:<sink.name>``) on every org's
outbox, so each sink receives every event and advances on its own: a dead
webhook never holds up the Redis-stream sink. One *partition* is one
(org, sink) pair, and one relay at a time works on it, under a short lock
(``…:relay:<sink>:lock``) that is extended before every attempt. So the events
of one org reach one sink in commit order, and a retrying event holds back the
later events of its org for that sink only (as a Kafka partition would).

In flight or not: the reclaim timeout
-------------------------------------
An entry read by a relay stays in the group's pending list (PEL) until the
sink accepted it (then ``XACK``). Right before each attempt the relay resets
the idle time of the entries it is about to send (``XCLAIM … JUSTID``), so an
entry's idle time is the time since its last attempt started. A relay that
returns normally *parks* what it read but did not settle (``XCLAIM … IDLE`` a
year): nothing of that is in flight. A relay that died parks nothing, and the
next holder of the partition reclaims its entries with ``XAUTOCLAIM`` only
once they are idle for ``claim_idle`` = webhook timeout + a margin, longer
than any attempt. A worker killed mid-request therefore never has its
request overlap the retry. Its event is sent again with the same id, which
the contract allows (at-least-once) and receivers de-duplicate on.

Retries without a blocked worker
--------------------------------
A failed attempt records ``head``, ``attempts``, ``next_at`` and the error in
the partition's hash and puts the partition in one fleet-wide sorted set,
``etb:relay:due``, scored by the time it is due. Nothing sleeps and no Celery
ETA is used (ETAs longer than the broker's visibility timeout get tasks run
twice). Beat's tick calls :meth:`Relay.due` every few seconds and enqueues a
``deliver`` task per returned partition; :meth:`Relay.notify` marks an org's
partitions due right after the poller committed events. ``due`` leases what
it returns (pushes its score a little into the future), so a partition whose
task waits in the queue is not enqueued again on every tick, and one whose
task was lost comes back when the lease ends. A task that finds its
partition busy leaves the holder a note (``…:lock:again``) that makes it read
once more before it lets go, so an event committed just after the holder's
last read never waits for a tick. Every ``sweep_every`` seconds
one tick in the fleet also looks at every org's groups and adds partitions
that have pending events but no entry in the set (a poller that died between
commit and notify).

The retry schedule (``ETBRIDGE_RETRY_SCHEDULE``, or ``?retry=0;5;300`` on a
sink URL): the first attempt waits value 1 after the commit; after attempt
*n* fails, attempt *n+1* waits value *n+1*, or the receiver's ``Retry-After``
when longer, plus up to 10 % jitter; when the attempt that waited the last
value fails, the event goes to the sink's dead-letter stream and the
partition moves on. A ``FatalError`` (an event that can never be encoded)
dead-letters at once; ``410 Gone`` disables the sink (``sink_state``) until
:func:`enable_sink`.

Routing filters (``?types=…&fields=…&orgs=…``, see :func:`etbridge.sinks.route`)
are applied here: an event a sink does not want is acknowledged unsent, and
an org outside ``orgs=`` gets no consumer group for that sink at all. A
sink's group starts at the beginning of the outbox, so events committed
before its first relay ran are delivered; a sink added later receives the
retained history (``ETBRIDGE_OUTBOX_RETENTION``, see :func:`trim`).

Keys (all of one partition share the org's hash tag)::

    etb:{org:ID}:outbox              stream   the org's events (poller)
    etb:{org:ID}:relay:SINK          hash     head, attempts, next_at, error, error_at
    etb:{org:ID}:relay:SINK:lock     string   the relay's token, PX claim_idle
    etb:{org:ID}:relay:SINK:lock:again string "read once more" note of a busy task
    etb:relay:due                    zset     "SINK:ORG" -> when due (epoch s)
    etb:relay:sweep                  string   NX guard: one sweep per interval
    etb:sink:SINK                    hash     disabled, last error, counters
    etb:sink:SINK:dlq                stream   dead letters
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import redis

from etbridge import keys
from etbridge.errors import EtbridgeError, FatalError, RetriableError
from etbridge.settings import Settings, SinkSpec, parse_sink
from etbridge.sinks import OutboxEvent, Sink, SinkGone, make_sink, route

if TYPE_CHECKING:
    import celery
    import requests

log = logging.getLogger("etbridge.outbox")

# Added to the webhook timeout to give the reclaim timeout (and the lock TTL):
# scheduling delays, a GC pause, the round trips around an attempt.
CLAIM_MARGIN: Final = 30.0
# How long a partition handed out by due()/notify() is not handed out again.
ENQUEUE_LEASE: Final = 30.0
# Seconds between two sweeps of all orgs' groups (fleet-wide).
SWEEP_EVERY: Final = 30.0
# A deliver() call stops after this long (and is enqueued again), so one
# partition with a backlog does not hold a worker from the others.
MAX_SECONDS: Final = 10.0
MAX_EVENTS: Final = 2000
# Parked entries get this idle time: "not in flight, claim at once".
_PARK_IDLE_MS: Final = 365 * 86400 * 1000
JITTER: Final = 0.1
# Consumers with nothing pending and idle this long are removed by trim().
_CONSUMER_IDLE_MS: Final = 86400 * 1000

DUE: Final = keys.RELAY_DUE
SWEEP: Final = keys.RELAY_SWEEP

# Outcomes of one deliver() call.
CAUGHT_UP: Final = "caught_up"  # nothing left to send
BUDGET: Final = "budget"  # stopped at max_events/max_seconds; due again now
RETRY: Final = "retry"  # an attempt failed; due again at next_at
WAITING: Final = "waiting"  # not due yet (retry time, first-attempt delay, in-flight entries)
BUSY: Final = "busy"  # another relay holds the partition
DISABLED: Final = "disabled"  # the sink is disabled (410 Gone)
FILTERED: Final = "filtered"  # the sink's orgs= filter excludes this org
LOST: Final = "lost_lock"  # the lock expired under us; the new holder goes on
UNKNOWN: Final = "unknown_sink"  # no configured sink has this name (any more)


# --- keys -----------------------------------------------------------------------


def group_name(sink_name: str) -> str:
    """The consumer group of a sink on every outbox stream."""
    return f"sink:{sink_name}"


partition_key = keys.relay_partition
lock_key = keys.relay_lock


def due_member(org_id: str, sink_name: str) -> str:
    # Sink names are hex, so the first ':' splits even org ids that hold one.
    return f"{sink_name}:{org_id}"


def _split_member(member: str) -> tuple[str, str]:
    sink_name, _, org_id = member.partition(":")
    return org_id, sink_name


# --- Lua ----------------------------------------------------------------------------

# KEYS[1] lock  KEYS[2] "again" note
# ARGV[1] token  ARGV[2] ttl ms
# Takes the partition's lock; when another relay holds it, leaves that relay a
# note to look once more before it lets go (the event that made this task may
# have been committed after the holder's last read). Returns 0 when taken,
# else the holder's lock PTTL in ms.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left < 1 then left = 1 end
return left
"""

# KEYS[1] lock  KEYS[2] "again" note
# ARGV[1] token
# The holder found nothing more to send: release the lock, unless a note asks
# to look again (then keep it). 1 released, 0 look again, -1 the lock was lost.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('DEL', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1] lock  KEYS[2] outbox stream
# ARGV[1] token  ARGV[2] ttl ms  ARGV[3] group  ARGV[4] consumer  ARGV[5..] ids
# For the holder only: extend the lock and reset the idle time of the entries
# about to be sent (they are in flight from now on). Returns 1, or 0 when lost.
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #ARGV >= 5 then
  local args = {'XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0}
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return 1
"""

# KEYS[1] lock  KEYS[2] partition state  KEYS[3] outbox stream
# ARGV[1] token  ARGV[2] ttl ms  ARGV[3] group  ARGV[4] n, then n ids to XACK,
# then field/value pairs for the state hash ("" deletes the field).
# Acks for whoever asks (the sink accepted those events either way); writes
# the state and extends the lock only for the holder. Returns 1 while the
# caller holds the lock, else 0.
_SETTLE = """
local n = tonumber(ARGV[4])
if n > 0 then
  local args = {'XACK', KEYS[3], ARGV[3]}
  for i = 5, 4 + n do args[#args + 1] = ARGV[i] end
  redis.call(unpack(args))
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 5 + n, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] lock  KEYS[2] outbox stream
# ARGV[1] token  ARGV[2] group  ARGV[3] consumer  ARGV[4] idle ms  ARGV[5..] ids
# For the holder only: park the entries it read but did not settle (nothing
# of them is in flight, so the next holder may claim them at once) and delete
# the lock. Returns 1, or 0 when the lock was no longer ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #ARGV >= 5 then
  local args = {'XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0}
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[4]
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1] due zset
# ARGV[1] now  ARGV[2] lease until  ARGV[3] limit
# Returns the members due by now and pushes them to the lease time.
_TAKE_DUE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, m in ipairs(members) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return members
"""

# KEYS[1] due zset
# ARGV[1] now  ARGV[2] lease until  ARGV[3..] members
# A member that is absent or due is leased and returned; one scored in the
# future (a retry wait, or a task already enqueued) is left alone.
_NOTIFY = """
local out = {}
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if (not score) or tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""


# --- pure helpers -----------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _stream_id(value: str) -> tuple[int, int]:
    millis, _, seq = value.partition("-")
    return int(millis), int(seq or 0)


def _next_id(value: str) -> str:
    millis, seq = _stream_id(value)
    return f"{millis}-{seq + 1}"


def wants_org(spec: SinkSpec, org_id: str) -> bool:
    """Whether the sink's ``orgs=`` filter lets this org's events through."""
    return not spec.filter.orgs or org_id in spec.filter.orgs


def retry_schedule(spec: SinkSpec, settings: Settings) -> tuple[float, ...]:
    """The sink's retry schedule: ``?retry=0;5;300`` on its URL, else the setting."""
    return spec.retry or tuple(settings.retry_schedule)


def next_delay(
    schedule: Sequence[float],
    failed_attempt: int,
    retry_after: float | None = None,
    *,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the attempt after ``failed_attempt`` (1-based), or ``None``: dead-letter.

    Attempt *n+1* waits value *n+1* of the schedule, or ``retry_after`` when
    longer, plus up to 10 % jitter (never less: a ``Retry-After`` is honoured).

    >>> next_delay([0, 5, 300], 1, rand=lambda: 0.0)
    5.0
    >>> next_delay([0, 5, 300], 3) is None
    True
    """
    if failed_attempt >= len(schedule):
        return None
    base = float(schedule[failed_attempt])
    if retry_after is not None and retry_after > base:
        base = float(retry_after)
    return base + base * JITTER * rand()


def resolve_sink(settings: Settings, ref: str | SinkSpec) -> SinkSpec:
    """A configured sink by name, URL or display URL; else ``ref`` parsed as a sink URL."""
    if isinstance(ref, SinkSpec):
        return ref
    for spec in settings.sinks:
        if ref in (spec.name, spec.url, spec.display):
            return spec
    return parse_sink(ref)


# --- results and records -------------------------------------------------------


@dataclass
class DeliveryResult:
    """What one :meth:`Relay.deliver` call did."""

    org_id: str
    sink_name: str
    outcome: str = CAUGHT_UP
    delivered: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    next_at: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """One event a sink gave up on, with its last error."""

    dlq_id: str
    sink_name: str
    sink: str  # display URL, password masked
    event_id: str
    org_id: str
    type: str
    entry_id: str
    attempts: int
    error: str
    failed_at: float
    body: bytes = field(repr=False)

    def line(self) -> str:
        """One line for ``etbridge dlq list``, starting with the event id."""
        when = datetime.fromtimestamp(self.failed_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"{self.event_id}  org={self.org_id} type={self.type} sink={self.sink} "
            f"attempts={self.attempts} failed_at={when} error={self.error}"
        )


def _dead_letter_from(sink: SinkSpec, dlq_id: str, fields: Mapping[Any, Any]) -> DeadLetter:
    values = {_text(k): v for k, v in fields.items()}
    body = values.get("event", b"")
    return DeadLetter(
        dlq_id=dlq_id,
        sink_name=sink.name,
        sink=sink.display,
        event_id=_text(values.get("event_id")),
        org_id=_text(values.get("org_id")),
        type=_text(values.get("type")),
        entry_id=_text(values.get("entry_id")),
        attempts=int(_text(values.get("attempts")) or 0),
        error=_text(values.get("error")),
        failed_at=float(_text(values.get("failed_at")) or 0),
        body=body if isinstance(body, bytes) else _text(body).encode(),
    )


# --- the relay -------------------------------------------------------------------


class _Partition:
    """One (org, sink) pair while a relay holds it: keys, token, what it holds."""

    def __init__(self, relay: Relay, org_id: str, spec: SinkSpec) -> None:
        self.relay = relay
        self.org_id = org_id
        self.spec = spec
        self.stream = keys.outbox(org_id)
        self.group = group_name(spec.name)
        self.state_key = partition_key(org_id, spec.name)
        self.lock = lock_key(org_id, spec.name)
        self.again = f"{self.lock}:again"
        self.member = due_member(org_id, spec.name)
        self.token = uuid.uuid4().hex
        # Entries read or claimed by this relay and not settled yet.
        self.held: list[str] = []

    def acquire(self) -> int:
        """0 when this relay holds the partition now, else the holder's lock PTTL (ms)."""
        return int(
            self.relay._acquire(
                keys=[self.lock, self.again], args=[self.token, self.relay.claim_idle_ms]
            )
        )

    def finish(self) -> int:
        """Caught up: let go, unless a task asked meanwhile. 1 done, 0 look again, -1 lost."""
        return int(self.relay._finish(keys=[self.lock, self.again], args=[self.token]))

    def extend(self, ids: Sequence[str]) -> bool:
        return bool(
            self.relay._extend(
                keys=[self.lock, self.stream],
                args=[
                    self.token,
                    self.relay.claim_idle_ms,
                    self.group,
                    self.relay.consumer,
                    *ids,
                ],
            )
        )

    def settle(self, ack: Sequence[str], state: Mapping[str, str | float | int]) -> bool:
        args: list[str | int | float] = [
            self.token,
            self.relay.claim_idle_ms,
            self.group,
            len(ack),
            *ack,
        ]
        for name, value in state.items():
            args += [name, value]
        held = self.relay._settle(keys=[self.lock, self.state_key, self.stream], args=args)
        if ack:
            acked = set(ack)
            self.held = [i for i in self.held if i not in acked]
        return bool(held)

    def release(self) -> None:
        self.relay._release(
            keys=[self.lock, self.stream],
            args=[self.token, self.group, self.relay.consumer, _PARK_IDLE_MS, *self.held],
        )
        self.held = []


# How _process sees an entry, and what _attempt tells it.
_SEND, _SKIP, _GONE, _POISON = "send", "skip", "gone", "poison"
_DEAD, _SINGLE = "dead", "single"

_CLEAR_STATE: Final = {"head": "", "attempts": "", "next_at": "", "error": "", "error_at": ""}


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
        self.broker_app = broker_app
        self.session = session
        self.claim_idle = settings.webhook_timeout + claim_margin
        self.claim_idle_ms = int(self.claim_idle * 1000)
        self.sweep_every = sweep_every
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.specs = {spec.name: spec for spec in settings.sinks}
        self._sinks: dict[str, Sink] = dict(sinks or {})
        self._groups: set[tuple[str, str]] = set()
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._finish = redis_client.register_script(_FINISH)
        self._extend = redis_client.register_script(_EXTEND)
        self._settle = redis_client.register_script(_SETTLE)
        self._release = redis_client.register_script(_RELEASE)
        self._take_due = redis_client.register_script(_TAKE_DUE)
        self._notify = redis_client.register_script(_NOTIFY)

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
        found = self._sinks.get(spec.name)
        if found is None:
            found = make_sink(
                spec,
                self.settings,
                redis_client=self.redis,
                broker_app=self.broker_app,
                session=self.session,
            )
            self._sinks[spec.name] = found
        return found

    def close(self) -> None:
        """Close the connections of the sinks this relay opened."""
        for sink in self._sinks.values():
            sink.close()
        self._sinks.clear()

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
        if not members:
            return []
        taken = self._notify(keys=[DUE], args=[now, now + ENQUEUE_LEASE, *members])
        return [_split_member(_text(m)) for m in taken]

    def due(self, now: float | None = None, *, limit: int = 1000) -> list[tuple[str, str]]:
        """The (org_id, sink_name) partitions to enqueue a ``deliver`` task for now.

        Those whose time has come in the due set (leased for
        :data:`ENQUEUE_LEASE` so the next tick does not repeat them), plus,
        once per ``sweep_every`` in the whole fleet, partitions with pending
        events that nobody scheduled.
        """
        now = time.time() if now is None else now
        taken = [
            _text(m) for m in self._take_due(keys=[DUE], args=[now, now + ENQUEUE_LEASE, limit])
        ]
        disabled = self._disabled_names()
        out: list[tuple[str, str]] = []
        stale: list[str] = []
        for member in taken:
            org_id, sink_name = _split_member(member)
            if sink_name not in self.specs or sink_name in disabled:
                stale.append(member)
            else:
                out.append((org_id, sink_name))
        if stale:
            # Unknown sinks (removed from the config) and disabled ones are not
            # scheduled; enable_sink() marks a re-enabled sink's orgs due again.
            self.redis.zrem(DUE, *stale)
        if self.sweep_every > 0 and self.redis.set(
            SWEEP, "1", nx=True, px=int(self.sweep_every * 1000)
        ):
            seen = set(out)
            out += [p for p in self._sweep(now, disabled) if p not in seen]
        return out

    def _sweep(self, now: float, disabled: set[str]) -> list[tuple[str, str]]:
        """Partitions with pending events, no due entry and no relay at work."""
        orgs = sorted(_text(o) for o in self.redis.hkeys(keys.ORGS))
        specs = [s for s in self.specs.values() if s.name not in disabled]
        if not orgs or not specs:
            return []
        infos = _group_infos(self.redis, orgs)
        candidates: list[tuple[str, str]] = []
        for org_id in orgs:
            length, groups = infos[org_id]
            for spec in specs:
                if not wants_org(spec, org_id):
                    continue
                info = groups.get(group_name(spec.name))
                if info is None:
                    busy = length > 0
                else:
                    lag = info.get("lag")
                    pending = int(info.get("pending") or 0)
                    busy = pending > 0 or (length > 0 and (lag is None or int(lag) > 0))
                if busy:
                    candidates.append((org_id, spec.name))
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for org_id, sink_name in candidates:
            pipe.zscore(DUE, due_member(org_id, sink_name))
            pipe.exists(lock_key(org_id, sink_name))
        answers = pipe.execute()
        out: list[tuple[str, str]] = []
        for index, (org_id, sink_name) in enumerate(candidates):
            score, locked = answers[2 * index], answers[2 * index + 1]
            if score is None and not locked:
                out.append((org_id, sink_name))
        if out:
            self.redis.zadd(DUE, {due_member(o, s): now + ENQUEUE_LEASE for o, s in out}, nx=True)
            log.info("relay sweep found unscheduled partitions count=%d", len(out))
        return out

    def _schedule(self, member: str, at: float) -> None:
        self.redis.zadd(DUE, {member: at})

    def _disabled_names(self) -> set[str]:
        names = list(self.specs)
        if not names:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(keys.sink_state(name), "disabled")
        return {n for n, flag in zip(names, pipe.execute(), strict=True) if flag}

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
        disabled. Never sleeps.
        """
        if isinstance(sink, str) and sink not in self.specs:
            # A task from before a configuration change: that sink is gone.
            self.redis.zrem(DUE, due_member(org_id, sink))
            log.warning("deliver for an unknown sink name=%s org_id=%s", sink, org_id)
            return DeliveryResult(org_id, sink, outcome=UNKNOWN)
        spec = self.spec(sink)
        result = DeliveryResult(org_id, spec.name)
        member = due_member(org_id, spec.name)
        if not wants_org(spec, org_id):
            self.redis.zrem(DUE, member)
            result.outcome = FILTERED
            return result
        if self.redis.hget(keys.sink_state(spec.name), "disabled"):
            self.redis.zrem(DUE, member)
            result.outcome = DISABLED
            return result
        part = _Partition(self, org_id, spec)
        left = part.acquire()
        if left:
            # The holder reads again before it lets go (the note acquire left).
            # Should it have died, the partition is due when its lock expires;
            # LT: never later than it is already scheduled (e.g. a budget stop).
            result.outcome = BUSY
            result.next_at = time.time() + left / 1000
            self.redis.zadd(DUE, {member: result.next_at}, lt=True)
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

    def _ensure_group(self, part: _Partition) -> None:
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

    def _pending_head(self, part: _Partition) -> dict[str, Any] | None:
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

    def _run(
        self, part: _Partition, result: DeliveryResult, max_events: int, deadline: float
    ) -> None:
        self._ensure_group(part)
        state = {_text(k): _text(v) for k, v in self.redis.hgetall(part.state_key).items()}
        now = time.time()
        next_at = float(state.get("next_at") or 0)
        if next_at > now:
            result.outcome = WAITING
            result.next_at = next_at
            self._schedule(part.member, next_at)
            return
        head = self._pending_head(part)
        if head is not None and int(head["time_since_delivered"]) < self.claim_idle_ms:
            # An attempt of a relay that died may still be in flight: wait until
            # it certainly is over, then reclaim (never overlap two attempts).
            wait = (self.claim_idle_ms - int(head["time_since_delivered"])) / 1000
            result.outcome = WAITING
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
                result.outcome = BUDGET
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
                        self.redis.zrem(DUE, part.member)
                        removed_from_due = True
                        continue
                    # ...whose acquire either finds the lock free, or leaves the note
                    # that finish() sees: then read again.
                    finished = part.finish()
                    if finished == 1:
                        result.outcome = CAUGHT_UP
                        return
                    if finished < 0:
                        result.outcome = LOST
                        return
                    continue
            removed_from_due = False
            processed += len(entries)
            if not self._process(part, sink, entries, state, result):
                return

    def _claim(self, part: _Partition, count: int) -> list[tuple[str, Any]]:
        answer = self.redis.xautoclaim(
            part.stream,
            part.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=count,
        )
        entries = [(_text(i), f) for i, f in answer[1] if i is not None]
        part.held += [i for i, _ in entries]
        return entries

    def _read(self, part: _Partition, count: int) -> list[tuple[str, Any]]:
        answer: Any = self.redis.xreadgroup(
            part.group, self.consumer, {part.stream: ">"}, count=count
        )
        # RESP2 answers [[stream, rows]], RESP3 {stream: [rows]}.
        streams = answer.values() if isinstance(answer, dict) else [r for _, r in answer or []]
        entries: list[tuple[str, Any]] = []
        for rows in streams:
            if rows and isinstance(rows[0], list):
                rows = rows[0]
            entries += [(_text(i), f) for i, f in rows]
        part.held += [i for i, _ in entries]
        return entries

    def _process(
        self,
        part: _Partition,
        sink: Sink,
        entries: Sequence[tuple[str, Any]],
        state: dict[str, str],
        result: DeliveryResult,
    ) -> bool:
        """Send a batch of entries in order. False: stop this run (outcome set)."""
        spec = part.spec
        schedule = retry_schedule(spec, self.settings)
        first_wait = schedule[0] if schedule else 0.0
        events: list[OutboxEvent] = []
        kinds: list[str] = []
        for entry_id, fields in entries:
            event = OutboxEvent(_event_body(fields), entry_id)
            events.append(event)
            kinds.append(self._classify(spec, event, fields))
            if kinds[-1] == _SKIP:
                result.skipped += 1

        def delayed(event: OutboxEvent) -> float | None:
            # The first attempt waits the schedule's first value after the commit.
            if first_wait <= 0 or state.get("head") == event.entry_id:
                return None
            at = event.committed_at + first_wait
            return at if at > time.time() else None

        ack: list[str] = []  # entries that need no sending: acked with the next settle
        batch_limit = sink.max_batch
        i = 0
        while i < len(events):
            kind, event = kinds[i], events[i]
            if kind in (_SKIP, _GONE):
                ack.append(event.entry_id)
                i += 1
                continue
            if kind == _POISON:
                # Not an event envelope: no attempt can fix it.
                error = f"outbox entry {event.entry_id} is not an event envelope"
                if not self._dead_letter(part, event, 0, error, ack, result):
                    result.outcome = LOST
                    return False
                ack = []
                i += 1
                continue
            wait_until = delayed(event)
            if wait_until is not None:
                if not part.settle(ack, {}):
                    result.outcome = LOST
                    return False
                result.outcome = WAITING
                result.next_at = wait_until
                self._schedule(part.member, wait_until)
                return False
            chunk: list[OutboxEvent] = []
            j = i
            while j < len(events) and len(chunk) < batch_limit:
                if kinds[j] in (_SKIP, _GONE):
                    # Acking a filtered entry early is harmless: it is never sent.
                    ack.append(events[j].entry_id)
                elif kinds[j] == _POISON or (chunk and delayed(events[j]) is not None):
                    break
                else:
                    chunk.append(events[j])
                j += 1
            outcome = self._attempt(part, sink, chunk, ack, state, schedule, result)
            if outcome is None:
                ack = []
                i = j
            elif outcome == _SINGLE:
                # A chunk of several failed for good: find the culprit one by one.
                batch_limit = 1
            elif outcome == _DEAD:
                ack = []
                i = events.index(chunk[0]) + 1
            else:
                return False
        if ack and not part.settle(ack, {}):
            result.outcome = LOST
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

    def _attempt(
        self,
        part: _Partition,
        sink: Sink,
        chunk: list[OutboxEvent],
        skip: list[str],
        state: dict[str, str],
        schedule: Sequence[float],
        result: DeliveryResult,
    ) -> str | None:
        """One attempt at a chunk. None: accepted; "dead"/"single": go on; else stop."""
        head = chunk[0]
        attempts = int(state.get("attempts") or 0) if state.get("head") == head.entry_id else 0
        attempt_no = attempts + 1
        ids = [e.entry_id for e in chunk]
        if not part.extend(ids):
            result.outcome = LOST
            return LOST
        try:
            if len(chunk) == 1:
                sink.send(head, attempt_no)
            else:
                sink.send_many(chunk, attempt_no)
        except SinkGone as exc:
            self._disable(part.spec, str(exc))
            part.settle(skip, {"next_at": ""})
            result.outcome = DISABLED
            result.error = str(exc)
            return DISABLED
        except EtbridgeError as exc:
            return self._failed(part, chunk, skip, state, schedule, attempt_no, exc, result)
        except Exception as exc:
            # A bug in a sink must not spin: treat it as a failed attempt, with backoff.
            log.exception(
                "sink raised unexpectedly sink=%s org_id=%s", part.spec.display, part.org_id
            )
            error = RetriableError(f"{type(exc).__name__} in {type(sink).__name__}")
            return self._failed(part, chunk, skip, state, schedule, attempt_no, error, result)
        if not part.settle([*skip, *ids], _CLEAR_STATE if state.get("head") else {}):
            result.outcome = LOST
            return LOST
        state.clear()
        result.delivered += len(chunk)
        return None

    def _failed(
        self,
        part: _Partition,
        chunk: list[OutboxEvent],
        skip: list[str],
        state: dict[str, str],
        schedule: Sequence[float],
        attempt_no: int,
        exc: EtbridgeError,
        result: DeliveryResult,
    ) -> str:
        head = chunk[0]
        error = str(exc)
        if isinstance(exc, FatalError) and len(chunk) > 1:
            return _SINGLE
        retry_after = exc.retry_after if isinstance(exc, RetriableError) else None
        delay = (
            None if isinstance(exc, FatalError) else next_delay(schedule, attempt_no, retry_after)
        )
        self.redis.hset(
            keys.sink_state(part.spec.name),
            mapping={"last_error": error, "last_error_at": time.time()},
        )
        if delay is None:
            if not self._dead_letter(part, head, attempt_no, error, skip, result):
                result.outcome = LOST
                return LOST
            state.clear()
            return _DEAD
        next_at = time.time() + delay
        log.warning(
            "delivery failed org_id=%s sink=%s event=%s attempt=%d retry_in=%.1fs error=%s",
            part.org_id,
            part.spec.display,
            head.event_id,
            attempt_no,
            delay,
            error,
        )
        new_state = {
            "head": head.entry_id,
            "attempts": str(attempt_no),
            "next_at": repr(next_at),
            "error": error,
            "error_at": repr(time.time()),
        }
        if not part.settle(skip, new_state):
            result.outcome = LOST
            return LOST
        state.clear()
        state.update(new_state)
        result.outcome = RETRY
        result.next_at = next_at
        result.error = error
        self._schedule(part.member, next_at)
        return RETRY

    def _dead_letter(
        self,
        part: _Partition,
        event: OutboxEvent,
        attempts: int,
        error: str,
        skip: list[str],
        result: DeliveryResult,
    ) -> bool:
        try:
            event_type = str(event.envelope.get("type", ""))
        except FatalError:
            event_type = ""
        # The dead letter first, the ack second: a crash in between leaves a
        # duplicate dead letter, never a lost event.
        self.redis.xadd(
            keys.dead_letters(part.spec.name),
            {
                "event_id": event.event_id,
                "org_id": part.org_id,
                "type": event_type,
                "entry_id": event.entry_id,
                "attempts": str(attempts),
                "error": error,
                "failed_at": repr(time.time()),
                "event": event.body,
            },
            maxlen=self.settings.stream_maxlen,
            approximate=True,
        )
        self.redis.hset(
            keys.sink_state(part.spec.name),
            mapping={"last_error": error, "last_error_at": time.time()},
        )
        log.warning(
            "dead-lettered org_id=%s sink=%s event=%s attempts=%d error=%s",
            part.org_id,
            part.spec.display,
            event.event_id,
            attempts,
            error,
        )
        result.dead_lettered += 1
        return part.settle([*skip, event.entry_id], _CLEAR_STATE)

    def _disable(self, spec: SinkSpec, reason: str) -> None:
        self.redis.hset(
            keys.sink_state(spec.name),
            mapping={
                "disabled": "1",
                "disabled_at": time.time(),
                "disabled_reason": reason,
                "last_error": reason,
                "last_error_at": time.time(),
            },
        )
        log.error("sink disabled sink=%s reason=%s", spec.display, reason)

    def _record(self, spec: SinkSpec, result: DeliveryResult, elapsed: float) -> None:
        if result.delivered or result.dead_lettered:
            pipe = self.redis.pipeline(transaction=False)
            if result.delivered:
                pipe.hincrby(keys.sink_state(spec.name), "delivered", result.delivered)
                pipe.hset(keys.sink_state(spec.name), "last_delivered_at", repr(time.time()))
            if result.dead_lettered:
                pipe.hincrby(keys.sink_state(spec.name), "dead_lettered", result.dead_lettered)
            pipe.execute()
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


def _event_body(fields: Any) -> bytes:
    if not fields:
        return b""
    value = fields.get(b"event", fields.get("event"))
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode()


# --- reading the groups -------------------------------------------------------------


def _group_infos(
    client: redis.Redis, orgs: Sequence[str]
) -> dict[str, tuple[int, dict[str, dict[str, Any]]]]:
    """Per org: outbox length and its consumer groups (``XINFO GROUPS``) by name."""
    pipe = client.pipeline(transaction=False)
    for org_id in orgs:
        pipe.xlen(keys.outbox(org_id))
        pipe.xinfo_groups(keys.outbox(org_id))
    answers = pipe.execute(raise_on_error=False)
    out: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}
    for index, org_id in enumerate(orgs):
        length, groups = answers[2 * index], answers[2 * index + 1]
        by_name: dict[str, dict[str, Any]] = {}
        if isinstance(groups, list):
            for info in groups:
                by_name[_text(info.get("name"))] = dict(info)
        out[org_id] = (length if isinstance(length, int) else 0, by_name)
    return out


def _unread(client: redis.Redis, org_id: str, info: Mapping[str, Any], length: int) -> int:
    """Entries the group has not read yet (``lag``, counted when Redis cannot say)."""
    lag = info.get("lag")
    if lag is not None:
        return int(lag)
    last = _text(info.get("last-delivered-id")) or "0-0"
    rows = client.xrange(keys.outbox(org_id), f"({last}", "+", count=max(length, 1))
    return len(rows or [])


# --- operator functions ---------------------------------------------------------------


def status(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Per sink: pending, retrying, dead-lettered, disabled, last error. Only reads Redis.

    Returns ``{"outbox": {pending, retrying, dead_lettered}, "sinks": {display
    URL: {...}}}``: the totals over all sinks, and the facts of each sink.
    ``pending`` counts events the sink has not accepted yet (unread, or read
    but unacknowledged) over all orgs; ``retrying`` the orgs whose head event
    waits for a retry. Sinks appear by display URL (password masked); times
    are RFC 3339 UTC.
    """
    orgs = sorted(_text(o) for o in client.hkeys(keys.ORGS))
    infos = _group_infos(client, orgs) if orgs else {}
    specs = list(settings.sinks)
    pipe = client.pipeline(transaction=False)
    for spec in specs:
        pipe.hgetall(keys.sink_state(spec.name))
        pipe.xlen(keys.dead_letters(spec.name))
        for org_id in orgs:
            pipe.hmget(partition_key(org_id, spec.name), ["attempts", "next_at", "error"])
    answers = iter(pipe.execute())
    sinks: dict[str, dict[str, Any]] = {}
    totals = {"pending": 0, "retrying": 0, "dead_lettered": 0}
    for spec in specs:
        sink_state = {_text(k): _text(v) for k, v in next(answers).items()}
        dead = int(next(answers))
        pending = 0
        retrying = 0
        for org_id in orgs:
            attempts, _next_at, _error = next(answers)
            if not wants_org(spec, org_id):
                continue
            if attempts:
                retrying += 1
            length, groups = infos[org_id]
            info = groups.get(group_name(spec.name))
            if info is None:
                pending += length
            else:
                pending += int(info.get("pending") or 0) + _unread(client, org_id, info, length)
        entry = {
            "name": spec.name,
            "kind": spec.kind,
            "pending": pending,
            "retrying": retrying,
            "dead_lettered": dead,
            "disabled": bool(sink_state.get("disabled")),
            "disabled_reason": sink_state.get("disabled_reason") or None,
            "disabled_at": _iso(sink_state.get("disabled_at")),
            "last_error": sink_state.get("last_error") or None,
            "last_error_at": _iso(sink_state.get("last_error_at")),
            "delivered": int(sink_state.get("delivered") or 0),
            "last_delivered_at": _iso(sink_state.get("last_delivered_at")),
        }
        sinks[spec.display] = entry
        totals["pending"] += pending
        totals["retrying"] += retrying
        totals["dead_lettered"] += dead
    return {"outbox": totals, "sinks": sinks}


def _iso(value: str | None) -> str | None:
    """An epoch-seconds field as RFC 3339 UTC (``None`` when unset)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def enable_sink(client: redis.Redis, settings: Settings, sink: str | SinkSpec) -> None:
    """Re-enable a sink disabled by ``410 Gone``; its orgs become due at once.

    Delivery resumes with the event that got the 410 (it was not acked).
    """
    spec = resolve_sink(settings, sink)
    client.hdel(keys.sink_state(spec.name), "disabled", "disabled_at", "disabled_reason")
    orgs = [_text(o) for o in client.hkeys(keys.ORGS)]
    members = {due_member(o, spec.name): time.time() for o in orgs if wants_org(spec, o)}
    if members:
        client.zadd(DUE, members)
    log.info("sink enabled sink=%s", spec.display)


def dlq_list(client: redis.Redis, settings: Settings, sink: str | None = None) -> list[DeadLetter]:
    """The dead letters of every configured sink (or of one: name, URL or display URL)."""
    specs = [resolve_sink(settings, sink)] if sink else list(settings.sinks)
    out: list[DeadLetter] = []
    for spec in specs:
        for dlq_id, fields in client.xrange(keys.dead_letters(spec.name)) or []:
            out.append(_dead_letter_from(spec, _text(dlq_id), fields or {}))
    return out


def dlq_lines(client: redis.Redis, settings: Settings, sink: str | None = None) -> list[str]:
    """``etbridge dlq list``: one line per dead letter, starting with its event id."""
    return [letter.line() for letter in dlq_list(client, settings, sink)]


def dlq_redeliver(
    client: redis.Redis,
    settings: Settings,
    ids: Iterable[str] | None = None,
    *,
    sink: str | None = None,
    broker_app: celery.Celery | None = None,
    session: requests.Session | None = None,
) -> int:
    """Send dead letters again, keeping their ids; each accepted one leaves the DLQ.

    ``ids`` are event ids (``None``: all). Per sink, redelivery stops at the
    first failure (the receiver is still down; the rest stay dead-lettered).
    A disabled sink is skipped. Returns the number of events delivered.
    """
    wanted = None if ids is None else set(ids)
    delivered = 0
    relay = Relay(client, settings, broker_app=broker_app, session=session)
    try:
        for letter_sink, letters in _group_by_sink(dlq_list(client, settings, sink)).items():
            spec = resolve_sink(settings, letter_sink)
            if client.hget(keys.sink_state(spec.name), "disabled"):
                log.warning("dlq redeliver skipped disabled sink=%s", spec.display)
                continue
            target = relay.sink(spec)
            for letter in letters:
                if wanted is not None and letter.event_id not in wanted:
                    continue
                try:
                    target.send(OutboxEvent(letter.body, letter.entry_id), letter.attempts + 1)
                except EtbridgeError as exc:
                    log.warning(
                        "dlq redeliver failed sink=%s event=%s error=%s",
                        spec.display,
                        letter.event_id,
                        exc,
                    )
                    break
                client.xdel(keys.dead_letters(spec.name), letter.dlq_id)
                delivered += 1
                log.info("dlq redelivered sink=%s event=%s", spec.display, letter.event_id)
    finally:
        relay.close()
    return delivered


def _group_by_sink(letters: Iterable[DeadLetter]) -> dict[str, list[DeadLetter]]:
    out: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        out.setdefault(letter.sink_name, []).append(letter)
    return out


def replay(
    client: redis.Redis,
    settings: Settings,
    sink: str | SinkSpec,
    since: datetime,
    org_id: str | None = None,
    *,
    broker_app: celery.Celery | None = None,
    session: requests.Session | None = None,
) -> int:
    """Re-send retained outbox events committed at or after ``since``, same ids.

    ``sink`` is a configured sink (name, URL, display URL) or any sink URL;
    its routing filter applies. Events go out in commit order per org,
    directly (not through the partitions' retry state), so a replay does not
    wait behind a retrying event. A failure stops the replay and propagates
    (the note says how many were sent). Returns the number of events sent.
    """
    spec = resolve_sink(settings, sink)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    start = f"{int(since.timestamp() * 1000)}-0"
    known = {_text(o) for o in client.hkeys(keys.ORGS)} | set(settings.orgs)
    orgs = [org_id] if org_id else sorted(known)
    relay = Relay(client, settings, broker_app=broker_app, session=session)
    target = relay.sink(spec)
    sent = 0
    try:
        for org in orgs:
            if not wants_org(spec, org):
                continue
            cursor = start
            while True:
                rows = client.xrange(keys.outbox(org), cursor, "+", count=500)
                if not rows:
                    break
                events = [OutboxEvent(_event_body(f), _text(i)) for i, f in rows]
                cursor = _next_id(events[-1].entry_id)
                chosen = [e for e in events if e.body and _routable(spec, e)]
                for offset in range(0, len(chosen), target.max_batch):
                    chunk = chosen[offset : offset + target.max_batch]
                    try:
                        target.send_many(chunk, 1)
                    except EtbridgeError as exc:
                        exc.add_note(f"replay to {spec.display} stopped after {sent} events")
                        raise
                    sent += len(chunk)
    finally:
        relay.close()
    log.info("replay sink=%s since=%s org_id=%s events=%d", spec.display, start, org_id, sent)
    return sent


def _routable(spec: SinkSpec, event: OutboxEvent) -> bool:
    try:
        return spec.filter.is_empty or route(spec.filter, event.envelope)
    except FatalError:
        return False


def trim(client: redis.Redis, settings: Settings, *, now: float | None = None) -> int:
    """Outbox retention: drop events older than ``outbox_retention`` that every sink acked.

    Per org, ``XTRIM MINID`` to the oldest of: the retention cut-off, and for
    each configured, enabled sink that takes the org, the oldest event its
    group has not acknowledged (an org whose group does not exist yet keeps
    everything). Disabled sinks do not hold the outbox back, so a sink that
    answered 410 cannot grow Redis without bound; once re-enabled it resumes
    with what is still retained. Also removes consumers idle for a day with
    nothing pending. Returns the number of events removed.
    """
    now = time.time() if now is None else now
    cutoff = f"{int((now - settings.outbox_retention) * 1000)}-0"
    orgs = sorted(_text(o) for o in client.hkeys(keys.ORGS))
    if not orgs:
        return 0
    specs = list(settings.sinks)
    pipe = client.pipeline(transaction=False)
    for spec in specs:
        pipe.hget(keys.sink_state(spec.name), "disabled")
    disabled = {s.name for s, flag in zip(specs, pipe.execute(), strict=True) if flag}
    removed = 0
    for org_id, (length, groups) in _group_infos(client, orgs).items():
        if length == 0:
            continue
        stream = keys.outbox(org_id)
        bound = cutoff
        for spec in specs:
            if spec.name in disabled or not wants_org(spec, org_id):
                continue
            info = groups.get(group_name(spec.name))
            if info is None:
                bound = "0-0"
                break
            if int(info.get("pending") or 0) > 0:
                oldest = _text(client.xpending(stream, group_name(spec.name)).get("min"))
            else:
                oldest = _next_id(_text(info.get("last-delivered-id")) or "0-0")
            if _stream_id(oldest) < _stream_id(bound):
                bound = oldest
        if _stream_id(bound) > (0, 0):
            removed += int(client.xtrim(stream, minid=bound, approximate=False))
        for name in groups:
            _drop_idle_consumers(client, stream, name)
    if removed:
        log.info("outbox trimmed events=%d orgs=%d", removed, len(orgs))
    return removed


def _drop_idle_consumers(client: redis.Redis, stream: str, group: str) -> None:
    for consumer in client.xinfo_consumers(stream, group):
        if (
            int(consumer.get("pending") or 0) == 0
            and int(consumer.get("idle") or 0) > _CONSUMER_IDLE_MS
        ):
            client.xgroup_delconsumer(stream, group, _text(consumer.get("name")))
