"""Partition locks: one relay at a time per (org, sink), fenced by a token.

The lock (``…:relay:SINK:lock``) is taken with a TTL of the reclaim timeout
and extended before every attempt; a busy task leaves the holder a note
(``…:lock:again``) to read once more before it lets go. Entries the holder
read are parked on release so the next holder claims them at once. The
protocol, with its failure cases, is in ``docs/relay.md``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

import redis

from etbridge.outbox.due import due_member
from etbridge.outbox.streams import group_name
from etbridge.settings import SinkSpec

if TYPE_CHECKING:
    from etbridge.outbox.relay import Relay

# Added to the webhook timeout to give the reclaim timeout (and the lock TTL):
# scheduling delays, a GC pause, the round trips around an attempt.
CLAIM_MARGIN: Final = 30.0
# Parked entries get this idle time: "not in flight, claim at once".
PARK_IDLE_MS: Final = 365 * 86400 * 1000

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


def _park_and_unlock(stream: str) -> str:
    """Lua shared by the finish and release scripts: park the holder's entries
    ARGV[5..] (XCLAIM to consumer ARGV[3] of group ARGV[2] with idle ARGV[4] ms,
    so the next holder may claim them at once), delete the lock, return 1."""
    return f"""if #ARGV >= 5 then
  local args = {{'XCLAIM', {stream}, ARGV[2], ARGV[3], 0}}
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[4]
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
redis.call('DEL', KEYS[1])
return 1
"""


# KEYS[1] lock  KEYS[2] "again" note  KEYS[3] outbox stream
# ARGV[1] token  ARGV[2] group  ARGV[3] consumer  ARGV[4] idle ms  ARGV[5..] ids
# The holder found nothing more to send: release the lock, unless a note asks
# to look again (then keep it). Releasing parks the entries it still holds
# (order=none: failed ones waiting for their retries). 1 released, 0 look
# again, -1 the lock was lost.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('DEL', KEYS[2]) == 1 then return 0 end
""" + _park_and_unlock("KEYS[3]")

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
""" + _park_and_unlock("KEYS[2]")


class LockScripts:
    """The lock scripts, registered once per Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.acquire = client.register_script(_ACQUIRE)
        self.finish = client.register_script(_FINISH)
        self.extend = client.register_script(_EXTEND)
        self.settle = client.register_script(_SETTLE)
        self.release = client.register_script(_RELEASE)


class Partition:
    """One (org, sink) pair while a relay holds it: keys, token, what it holds."""

    def __init__(self, relay: Relay, org_id: str, spec: SinkSpec) -> None:
        self.relay = relay
        self.scripts = relay.locks
        self.org_id = org_id
        self.spec = spec
        ks = relay.ks
        self.stream = ks.outbox(org_id)
        self.group = group_name(spec.name)
        self.state_key = ks.relay_partition(org_id, spec.name)
        self.lock = ks.relay_lock(org_id, spec.name)
        self.again = f"{self.lock}:again"
        self.member = due_member(org_id, spec.name)
        self.token = uuid.uuid4().hex
        # Entries read or claimed by this relay and not settled yet.
        self.held: list[str] = []
        # Per run: when it must stop, and (order=none) the earliest waiting retry.
        self.deadline = float("inf")
        self.earliest_retry: float | None = None

    def note_retry(self, at: float) -> None:
        """``order=none``: an entry of this partition waits for a retry at ``at``."""
        if self.earliest_retry is None or at < self.earliest_retry:
            self.earliest_retry = at

    def acquire(self) -> int:
        """0 when this relay holds the partition now, else the holder's lock PTTL (ms)."""
        return int(
            self.scripts.acquire(
                keys=[self.lock, self.again], args=[self.token, self.relay.claim_idle_ms]
            )
        )

    def finish(self) -> int:
        """Caught up: let go, unless a task asked meanwhile. 1 done, 0 look again, -1 lost."""
        done = int(
            self.scripts.finish(
                keys=[self.lock, self.again, self.stream],
                args=[self.token, self.group, self.relay.consumer, PARK_IDLE_MS, *self.held],
            )
        )
        if done == 1:
            self.held = []
        return done

    def extend(self, ids: Sequence[str]) -> bool:
        """Extend the lock and mark ``ids`` in flight from now; False when the lock is lost."""
        return bool(
            self.scripts.extend(
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
        """Ack ``ack`` and write ``state`` ("" deletes a field); False when the lock is lost."""
        args: list[str | int | float] = [
            self.token,
            self.relay.claim_idle_ms,
            self.group,
            len(ack),
            *ack,
        ]
        for name, value in state.items():
            args += [name, value]
        held = self.scripts.settle(keys=[self.lock, self.state_key, self.stream], args=args)
        if ack:
            acked = set(ack)
            self.held = [i for i in self.held if i not in acked]
        return bool(held)

    def release(self) -> None:
        """Park what this relay holds (not in flight) and delete the lock."""
        self.scripts.release(
            keys=[self.lock, self.stream],
            args=[self.token, self.group, self.relay.consumer, PARK_IDLE_MS, *self.held],
        )
        self.held = []
