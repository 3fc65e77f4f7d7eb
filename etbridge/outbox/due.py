"""The due set: which partitions need a ``deliver`` task, and when.

One fleet-wide sorted set, ``etb:relay:due`` (member ``SINK:ORG``, score the
time it is due). Beat's tick takes what is due (leased for
:data:`ENQUEUE_LEASE`, so a queued task is not enqueued again); the poller's
notify marks an org's partitions due at once; a sweep every
:data:`SWEEP_EVERY` seconds finds partitions with pending events that nobody
scheduled. Partitions of ``order=none`` sinks whose failed events wait for
their retries are in a second set, ``etb:relay:retry``, so that a new event's
notify is never held up by them. See ``docs/relay.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final

import redis

from etbridge import keys
from etbridge.outbox.streams import group_infos, group_name, known_orgs, text, wants_org
from etbridge.settings import SinkSpec

log = logging.getLogger("etbridge.outbox")

# How long a partition handed out by take()/notify() is not handed out again.
ENQUEUE_LEASE: Final = 30.0
# Seconds between two sweeps of all orgs' groups (fleet-wide).
SWEEP_EVERY: Final = 30.0


def due_member(org_id: str, sink_name: str) -> str:
    """The due set's member of a partition."""
    # Sink names are hex, so the first ':' splits even org ids that hold one.
    return f"{sink_name}:{org_id}"


def split_member(member: str) -> tuple[str, str]:
    """``(org_id, sink_name)`` of a due set member."""
    sink_name, _, org_id = member.partition(":")
    return org_id, sink_name


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


class DueSet:
    """The due set of one fleet, seen by one process."""

    def __init__(self, client: redis.Redis, ks: keys.Keyspace) -> None:
        self.redis = client
        self.ks = ks
        self.due, self.retry = ks.relay_due, ks.relay_retry
        self._take = client.register_script(_TAKE_DUE)
        self._notify = client.register_script(_NOTIFY)

    def notify(self, members: Sequence[str], now: float) -> list[tuple[str, str]]:
        """Lease the members that are absent or due; returns them as (org, sink) pairs."""
        if not members:
            return []
        taken = self._notify(keys=[self.due], args=[now, now + ENQUEUE_LEASE, *members])
        return [split_member(text(m)) for m in taken]

    def take(self, now: float, limit: int) -> list[str]:
        """The members due by ``now`` (at most ``limit`` of each set), leased."""
        out: list[str] = []
        for key in (self.due, self.retry):
            taken = self._take(keys=[key], args=[now, now + ENQUEUE_LEASE, limit])
            out += [text(m) for m in taken if text(m) not in out]
        return out

    def schedule_retry(self, member: str, at: float | None) -> None:
        """``order=none``: the partition's earliest waiting retry (``None``: none waits)."""
        if at is None:
            self.redis.zrem(self.retry, member)
        else:
            self.redis.zadd(self.retry, {member: at})

    def schedule(self, member: str, at: float) -> None:
        self.redis.zadd(self.due, {member: at})

    def schedule_no_later(self, member: str, at: float) -> None:
        """Due at ``at``, unless it is due sooner already."""
        self.redis.zadd(self.due, {member: at}, lt=True)

    def remove(self, *members: str, retries: bool = False) -> None:
        """Out of the due set (``retries``: out of the retry set too)."""
        if members:
            self.redis.zrem(self.due, *members)
            if retries:
                self.redis.zrem(self.retry, *members)

    def sweep_turn(self, every: float) -> bool:
        """True for one caller in the fleet per ``every`` seconds."""
        return every > 0 and bool(
            self.redis.set(self.ks.relay_sweep, "1", nx=True, px=int(every * 1000))
        )

    def unscheduled(self, specs: Iterable[SinkSpec], now: float) -> list[tuple[str, str]]:
        """Partitions with pending events, no due entry and no relay at work (now leased)."""
        orgs = known_orgs(self.redis, self.ks)
        specs = list(specs)
        if not orgs or not specs:
            return []
        infos = group_infos(self.redis, self.ks, orgs)
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
            pipe.zscore(self.due, due_member(org_id, sink_name))
            pipe.zscore(self.retry, due_member(org_id, sink_name))
            pipe.exists(self.ks.relay_lock(org_id, sink_name))
        answers = pipe.execute()
        out: list[tuple[str, str]] = []
        for index, (org_id, sink_name) in enumerate(candidates):
            score, retry, locked = answers[3 * index : 3 * index + 3]
            if score is None and retry is None and not locked:
                out.append((org_id, sink_name))
        if out:
            self.redis.zadd(
                self.due, {due_member(o, s): now + ENQUEUE_LEASE for o, s in out}, nx=True
            )
            log.info("relay sweep found unscheduled partitions count=%d", len(out))
        return out
