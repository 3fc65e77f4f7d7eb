"""Two patches of kombu's Redis channel: a guard, and one client per pool.

Celery 5.7 collects a lost connection (its ``client`` becomes ``None``) and then
closes it; a channel with unacknowledged messages (``acks_late``) then makes
kombu rebuild its pool from that client: ``AttributeError: 'NoneType' object
has no attribute 'hostname'``, which Celery does not ignore, so the worker
stops ("Unrecoverable error") instead of reconnecting (the Sentinel failover
fault test, about one run in three). The guard makes it the connection error
it is; the messages stay unacked and are restored, and the planner replans the
org when its lease expires. tests/test_kombufix.py shows when it can go.
kombu also builds a new ``redis.Redis`` for every pipeline (a delivery's
unacked entry, its ack): ~0.1 ms of CPU each with redis-py 8 (two per task) in a
worker's main process; the channel now keeps one per pool.
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

DETACHED = "the broker connection was closed while its channel was still open"


def install() -> None:
    """Patch kombu's Redis channel once; idempotent."""
    channel = kombu_redis.Channel
    if not getattr(channel._create_client, "_etbridge_cached", False):
        setattr(channel, "_create_client", _one_client_per_pool(channel._create_client))  # noqa: B010
    if getattr(channel._connparams, "_etbridge_guard", False):
        return
    original: Any = channel._connparams

    @functools.wraps(original)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError(DETACHED)
        return original(self, *args, **kwargs)

    _connparams._etbridge_guard = True  # type: ignore[attr-defined]
    setattr(channel, "_connparams", _connparams)  # noqa: B010 - a class attribute, on purpose


def _one_client_per_pool(original: Any) -> Any:
    """``Channel._create_client`` that builds the synchronous client once per pool.

    A ``redis.Redis`` holds only its pool and its reply parsers: every command
    takes a connection from the pool, so one client serves every caller (and
    thread) as the fresh ones did. A new pool (after a reconnect) gets a new
    client; the asynchronous client is kombu's (it builds that one once).
    """

    @functools.wraps(original)
    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return original(self, asynchronous=True)
        pool = self.pool  # built here when there is none (the guard above applies)
        cached = self.__dict__.get("_etbridge_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, original(self))
            self._etbridge_client = cached
        return cached[1]

    _create_client._etbridge_cached = True  # type: ignore[attr-defined]
    return _create_client
