"""A sink's ``rate=N/s``: a fleet-wide pace of events, one GCRA timestamp in Redis.

Every relay of the sink (all orgs, all workers) takes from one pace, so a slow
receiver gets at most ``N`` events a second with bursts of at most one
second's worth. Decided on Redis's clock by one script.
"""

from __future__ import annotations

import math

import redis

from etbridge import keys
from etbridge.settings import SinkSpec

# KEYS[1] pace key
# ARGV[1] emission interval (ms per event)  ARGV[2] burst (events)  ARGV[3] n events
# GCRA: grants n events when the theoretical arrival time after them lies at
# most one burst ahead of now. Returns 0 when granted, else the ms to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local after = tat + interval * n
local ahead = after - now - interval * burst
if ahead > 0 then return math.ceil(ahead) end
redis.call('SET', KEYS[1], after, 'PX', math.ceil(after - now) + 1000)
return 0
"""


def burst(spec: SinkSpec) -> int:
    """Events one take may ask for: one second's worth, at least one."""
    return max(1, math.floor(spec.rate or 1.0))


class Pacer:
    """Takes events from each rated sink's pace."""

    def __init__(self, client: redis.Redis, ks: keys.Keyspace) -> None:
        self.ks = ks
        self._take = client.register_script(_TAKE)

    def take(self, spec: SinkSpec, count: int) -> float:
        """0.0 when ``count`` events may go now, else the seconds to wait first."""
        if not spec.rate:
            return 0.0
        interval = 1000.0 / spec.rate
        wait_ms = int(
            self._take(keys=[self.ks.sink_pace(spec.name)], args=[interval, burst(spec), count])
        )
        return wait_ms / 1000.0
