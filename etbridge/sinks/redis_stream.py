"""The Redis-stream sink: ``XADD KEY MAXLEN ~ N * event <envelope JSON>``.

``redis-stream:KEY`` writes on etbridge's own Redis; ``redis-stream://HOST/DB/KEY``
(``redis-streams://`` for TLS) on another one. Consumers read with consumer
groups. A batch of events goes out in one pipeline: one round trip for
hundreds of events is what makes thousands of events per second per process.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from etbridge import redisconn
from etbridge.errors import ServerError, TransportError
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import OutboxEvent, Sink


class RedisStreamSink(Sink):
    """Appends each event's envelope JSON to a stream, field ``event``."""

    max_batch = 500

    def __init__(self, spec: SinkSpec, settings: Settings, *, client: redis.Redis | None) -> None:
        super().__init__(spec)
        self.key = spec.key
        self.maxlen = settings.stream_maxlen
        self._own = spec.redis_url is not None or client is None
        if spec.redis_url is not None:
            # Another Redis: its own connection pool, bounded like one webhook attempt.
            self.client = redisconn.connect(
                spec.redis_url,
                socket_timeout=settings.webhook_timeout,
                socket_connect_timeout=min(10.0, settings.webhook_timeout),
            )
        elif client is not None:
            self.client = client
        else:
            self.client = redisconn.connect(
                settings.redis_url, socket_timeout=settings.webhook_timeout
            )

    def send(self, event: OutboxEvent, attempt_no: int) -> None:
        self.send_many([event], attempt_no)

    def send_many(self, events: Sequence[OutboxEvent], attempt_no: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.key, {"event": event.body}, maxlen=self.maxlen, approximate=True)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The message of a connection error names host and port, never the password.
            raise TransportError(
                f"redis-stream {self.spec.display}: {type(exc).__name__}"
            ) from None
        except redis.ResponseError as exc:
            # WRONGTYPE, OOM, READONLY...: an operator can fix these, so retry.
            raise ServerError(f"redis-stream {self.spec.display}: {str(exc)[:200]}") from None
        except redis.RedisError as exc:
            raise TransportError(
                f"redis-stream {self.spec.display}: {type(exc).__name__}"
            ) from None

    def close(self) -> None:
        if self._own:
            self.client.close()
