"""etbridge/kombufix.py: closing a collected broker connection with an unacked message."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer
from kombu.transport import redis as kombu_redis

from etbridge import kombufix


def _collected_connection_with_an_unacked_message(redis_url: str) -> Connection:
    conn = Connection(redis_url, transport_options={"visibility_timeout": 3600})
    channel = conn.default_channel
    queue = Queue("kombufix", channel=channel)
    queue.declare()
    Producer(channel).publish({"n": 1}, routing_key="kombufix")
    assert queue.get(no_ack=False) is not None  # delivered, not acknowledged
    # What Celery 5.7 does on a lost connection, and the pool lost with it:
    # the transport is detached, the channel stays open.
    conn._do_close_transport()
    channel._disconnect_pools()  # type: ignore[attr-defined]  # kombu Redis Channel, untyped
    return conn


def test_kombu_alone_stops_on_the_detached_connection(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure the guard exists for; if kombu fixes it, drop etbridge/kombufix.py."""
    channel = kombu_redis.Channel
    if getattr(channel._connparams, "_etbridge_guard", False):  # etbridge.worker imported
        monkeypatch.setattr(
            channel,
            "_connparams",
            channel._connparams.__wrapped__,  # type: ignore[attr-defined]  # set by functools.wraps
        )
    conn = _collected_connection_with_an_unacked_message(redis_url)
    with pytest.raises(AttributeError, match="hostname"):
        conn.close()


def test_the_guard_makes_it_a_connection_error_that_close_ignores(redis_url: str) -> None:
    kombufix.install()
    kombufix.install()  # idempotent
    conn = _collected_connection_with_an_unacked_message(redis_url)
    conn.close()  # maybe_close_channel ignores connection errors
    assert conn._closed


def test_one_client_per_pool_until_the_pool_is_rebuilt(redis_url: str) -> None:
    kombufix.install()
    conn = Connection(redis_url, transport_options={"visibility_timeout": 3600})
    try:
        channel: Any = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        queue = Queue("kombufix-client", channel=channel)
        queue.declare()
        Producer(channel).publish({"n": 2}, routing_key="kombufix-client")
        message = queue.get(no_ack=False)
        assert message is not None and message.payload == {"n": 2}
        message.ack()  # the unacked entry and the ack go through the one client
        assert not channel.client.hlen(channel.unacked_key)
        channel._disconnect_pools()  # a reconnect: a new pool, so a new client
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool
        assert channel.async_pool is not channel.pool  # kombu's own asynchronous client
    finally:
        conn.close()
