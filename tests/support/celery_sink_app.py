"""A Celery app for the ``celery://`` sink test: a real worker that records what it receives.

Started as ``celery -A tests.support.celery_sink_app worker -Q QUEUE`` with
``ETB_TEST_BROKER`` set to the test Redis; the task appends each envelope it
receives (as JSON) to the Redis list :data:`RECEIVED` (on ``ETB_TEST_RECORD_REDIS``, by
default the broker: a RabbitMQ broker has no lists). ``ETB_TEST_QUEUE_TYPE=quorum``
declares the queue as a RabbitMQ quorum queue, as etbridge's sink then does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("ETB_TEST_BROKER", "redis://127.0.0.1:6379/0")
RECEIVED = "etb-test:celery:received"
TASK = "etb_test.record"
RECORD_REDIS = os.environ.get("ETB_TEST_RECORD_REDIS", BROKER)
QUEUE_TYPE = os.environ.get("ETB_TEST_QUEUE_TYPE", "classic")

app = Celery("etb_test_sink", broker=BROKER)
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_create_missing_queue_type=QUEUE_TYPE,
)

_client: redis.Redis | None = None


@app.task(name=TASK)
def record(envelope: dict[str, Any]) -> None:
    global _client  # noqa: PLW0603  (one client per worker process, made on first use)
    if _client is None:
        _client = redis.Redis.from_url(RECORD_REDIS)
    _client.rpush(RECEIVED, json.dumps(envelope))
