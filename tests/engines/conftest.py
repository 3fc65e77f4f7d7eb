"""Fixtures of the engine tests: Redis Cluster, Sentinel and RabbitMQ started by the tests.

Here ``redis_url`` and ``r`` point at a real 3-master Redis Cluster (one per
session, emptied before each test), so the modules that re-export the suite's
state, token, budget and outbox tests run them against the cluster unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from etbridge import redisconn
from etbridge.redisserver import RedisServer
from tests.support.engines import RabbitNode, RedisClusterSet


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSet]:
    with RedisClusterSet() as cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_cluster: RedisClusterSet) -> str:
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redisconn.connect(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster cannot be the Celery broker: settings built here name one explicitly."""
    monkeypatch.setenv("ETBRIDGE_BROKER_URL", "memory://")


@pytest.fixture
def fault_redis() -> Iterator[RedisServer]:
    """A private Redis with AOF, as in tests/faults/ (a scenario may restart it)."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def rabbit() -> Iterator[RabbitNode]:
    """A RabbitMQ node of its own (Debian's rabbitmq-server), stopped after the test."""
    with RabbitNode() as node:
        yield node
