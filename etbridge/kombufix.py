"""A guard for one kombu/Celery failure on a lost Redis broker connection.

Celery 5.7 collects a lost connection (its ``client`` becomes ``None``) and then
closes it; a channel with unacknowledged messages (``acks_late``) then makes
kombu rebuild its pool from that client: ``AttributeError: 'NoneType' object
has no attribute 'hostname'``, which Celery does not ignore, so the worker
stops ("Unrecoverable error") instead of reconnecting (the Sentinel failover
fault test, about one run in three). The guard makes it the connection error
it is; the messages stay unacked and are restored, and the planner replans the
org when its lease expires. tests/test_kombufix.py shows when it can go.
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
