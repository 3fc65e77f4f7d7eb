"""The Celery queues ``plan``, ``poll`` and ``deliver``: classic or quorum (RabbitMQ).

``ETBRIDGE_BROKER_QUEUE_TYPE=quorum`` declares them with ``x-queue-type=quorum``
on topic exchanges ``etbridge.NAME``, so Celery (>= 5.5) switches the worker
to per-consumer QoS and, for a message with a countdown, to RabbitMQ's native
delayed delivery (a direct exchange would make such a message wait, held, in
a worker). etbridge's own tasks carry no countdown: timed sends and delivery
retries wait in Redis (sender.py, outbox). Classic is the default and keeps
Celery's own declarations (a direct exchange of the queue's name). The quorum
exchanges have other names, so switching needs only the old queues deleted.
"""

from __future__ import annotations

from typing import Literal

from kombu.entity import Exchange, Queue

QueueType = Literal["classic", "quorum"]
NAMES = ("plan", "poll", "deliver")


def task_queues(queue_type: QueueType) -> tuple[Queue, ...]:
    """The three queues, declared as ``queue_type``."""
    if queue_type == "classic":
        return tuple(Queue(name) for name in NAMES)
    return tuple(
        Queue(
            name,
            Exchange(f"etbridge.{name}", type="topic"),
            routing_key=name,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in NAMES
    )


def sink_conf(queue_type: QueueType) -> dict[str, str]:
    """Celery settings of the celery:// sink's app: its queue, declared when missing,
    is of the same type (RabbitMQ refuses a declaration of another type)."""
    return {"task_create_missing_queue_type": queue_type}
