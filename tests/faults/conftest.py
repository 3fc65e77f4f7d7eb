"""Fixtures of the fault suite: each scenario gets its own Redis, with AOF.

Not the session's Redis of tests/conftest.py: a scenario may restart or kill
its server, and AOF (``appendfsync always``) is what a production Redis that
survives a restart runs with.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from etbridge.redisserver import RedisServer


@pytest.fixture
def fault_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server
