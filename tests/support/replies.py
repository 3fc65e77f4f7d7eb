"""Redis replies in tests as typed values (test clients do not decode responses).

redis-py types a reply as every shape any command could return; these helpers say which
one a stream read returns, so the tests index it without casts of their own.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

StreamEntry = tuple[bytes, dict[bytes, bytes]]


def stream(
    client: redis.Redis, key: str, start: str = "-", end: str = "+", count: int | None = None
) -> list[StreamEntry]:
    """XRANGE ``key`` as (entry id, fields) pairs of bytes."""
    return cast(list[StreamEntry], client.xrange(key, start, end, count=count))


def stream_events(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The JSON ``event`` field of every entry of a stream, oldest first."""
    return [json.loads(fields[b"event"]) for _id, fields in stream(client, key)]


def group_read(
    client: redis.Redis, group: str, consumer: str, key: str, count: int, block: int | None = None
) -> list[StreamEntry]:
    """XREADGROUP of new entries (``>``) of one stream."""
    answer = cast(
        list[tuple[bytes, list[StreamEntry]]] | None,
        client.xreadgroup(group, consumer, {key: ">"}, count=count, block=block),
    )
    return [entry for _stream, rows in answer or [] for entry in rows]
