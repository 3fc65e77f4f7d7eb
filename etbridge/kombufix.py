"""A guard for one kombu/Celery failure on a lost Redis broker connection.

Celery 5.7 handles a lost broker connection by collecting the connection
(which detaches its transport: ``connection.client`` becomes ``None``) and then
closing it. If closing the channel still has unacknowledged messages to give
back (every running task with ``acks_late``) and the channel's pool is already
gone, kombu rebuilds the pool from ``connection.client`` and raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not
one of the connection errors Celery ignores there, so the worker stops with
"Unrecoverable error" instead of reconnecting. Seen in the Sentinel failover
fault test (tests/engines/test_fault_sentinel.py) about one run in three.

The guard makes that case the connection error it is. The messages stay in
kombu's unacked set, where a worker restores them after the visibility
timeout; the planner does not wait for that: it plans an org again as soon as
the poll's lease expires, and the outbox is delivered from Redis, not from the
lost message.
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
