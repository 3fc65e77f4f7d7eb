"""The process's lease heartbeat: it keeps every held lease alive, and lets go when dropped."""

from __future__ import annotations

import time

import redis

from etbridge import keys, poller
from etbridge.state import OrgState


def test_held_leases_outlive_their_ttl_and_dropped_ones_expire(r: redis.Redis) -> None:
    states = [OrgState(r, keys.DEFAULT, org, "bookings") for org in ("hb1", "hb2")]
    leases = [st.acquire_lease(0.3) for st in states]
    assert all(leases)
    beat = poller._heartbeat()
    assert poller._heartbeat() is beat  # one thread per process
    held = [beat.hold(st, lease) for st, lease in zip(states, leases, strict=True) if lease]
    try:
        # Three lifetimes later both leases still stand: extended every 0.1 s.
        deadline = time.monotonic() + 0.9
        while time.monotonic() < deadline:
            assert all(r.exists(keys.DEFAULT.lease(org)) for org in ("hb1", "hb2"))
            time.sleep(0.05)  # sampling the lease while time passes, not waiting for a state
        beat.drop(held[0])
        # The dropped one expires within its lifetime; the other goes on.
        deadline = time.monotonic() + 2.0
        while r.exists(keys.DEFAULT.lease("hb1")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not r.exists(keys.DEFAULT.lease("hb1"))
        assert r.exists(keys.DEFAULT.lease("hb2"))
    finally:
        for n in held:
            beat.drop(n)
