"""Redis Sentinel: state, token and budget follow a failover; WAIT guards page commits.

A real set (tests/support/engines.py): one master, one replica, three
sentinels on loopback. The master is SIGKILLed, as a crash would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from etbridge import keys, redisconn
from etbridge.ratelimit import RequestBudget
from etbridge.state import CommitNotReplicated, CommitPlan, OrgState
from tests.support.engines import SentinelSet
from tests.support.fleet import wait_for
from tests.support.replies import stream


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet() as s:
        yield s


def _client(url: str) -> redis.Redis:
    return redisconn.connect(url, socket_timeout=5, socket_connect_timeout=2, retry_on_timeout=True)


def _plan(n: int) -> CommitPlan:
    return CommitPlan(events=[f'{{"id":"e{n}"}}'], meta={"watermark": str(n)})


def test_wait_counts_replicas_and_refuses_an_unreplicated_commit(sentinels: SentinelSet) -> None:
    client = _client(sentinels.url)
    state = OrgState(client, keys.DEFAULT, "7", "bookings", wait=(1, 2000))
    lease = state.acquire_lease(30)
    assert lease is not None
    assert state.commit(lease, _plan(1)) == 1
    # Two replicas asked for, one exists: the commit is applied but not acknowledged.
    strict = OrgState(client, keys.DEFAULT, "7", "bookings", wait=(2, 200))
    with pytest.raises(CommitNotReplicated, match="1 of 2 replicas"):
        strict.commit(lease, _plan(2))
    assert client.xlen(keys.DEFAULT.outbox("7")) == 2


def test_state_budget_and_lease_follow_a_failover(sentinels: SentinelSet) -> None:
    client = _client(sentinels.url)
    state = OrgState(client, keys.DEFAULT, "8", "bookings", wait=(1, 2000))
    budget = RequestBudget(client, keys.DEFAULT, "app", 50)
    lease = state.acquire_lease(60)
    assert lease is not None
    assert state.commit(lease, _plan(1)) == 1
    assert budget.try_acquire() == 0.0
    old = sentinels.master_port()
    new = sentinels.kill_master()
    assert new != old

    def commits() -> bool:
        try:
            return state.commit(lease, _plan(2)) == 1
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            return False

    # The acknowledged commit survived; the same client finds the new master by itself.
    wait_for(commits, 30, "a commit on the new master")
    assert [f[b"event"] for _id, f in stream(client, keys.DEFAULT.outbox("8"))] == [
        b'{"id":"e1"}',
        b'{"id":"e2"}',
    ]
    assert budget.status()["used"] >= 1 and budget.try_acquire() == 0.0
    assert state.meta()["watermark"] == "2"
