"""Fixtures shared by the whole suite: a private real Redis per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from etbridge.redisserver import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free loopback port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the emptied test Redis (bytes responses)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
