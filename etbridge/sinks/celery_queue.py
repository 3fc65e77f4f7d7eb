"""The Celery sink: ``celery://QUEUE/TASK`` sends ``TASK(envelope)`` to ``QUEUE``.

``app.send_task(TASK, args=[envelope], queue=QUEUE)`` on ``ETBRIDGE_BROKER_URL``,
JSON serializer, so any Celery worker that consumes the queue and defines the
task receives the envelope as a dict. The task does not have to be known to
etbridge; the queue is declared on the broker when missing, as a quorum queue
with ``ETBRIDGE_BROKER_QUEUE_TYPE=quorum`` (its consumer must declare it so too).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import EncodeError, OperationalError

from etbridge import brokerqueues
from etbridge.errors import FatalError, TransportError
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import OutboxEvent, Sink

# Publishing retries inside one attempt: a broker blip is bridged here, a broker
# outage surfaces quickly as a retriable error and waits on the retry schedule.
_PUBLISH_RETRY = {
    "max_retries": 2,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


class CelerySink(Sink):
    """Publishes each event as a Celery task message."""

    max_batch = 100

    def __init__(self, spec: SinkSpec, settings: Settings, *, app: Celery | None = None) -> None:
        super().__init__(spec)
        self._own = app is None
        if app is None:
            # A private app: set_as_current=False keeps it from becoming the
            # process's default app (the worker's own app stays current).
            app = Celery("etbridge-sink", broker=settings.broker_url, set_as_current=False)
            app.conf.update(
                task_serializer="json",
                accept_content=["json"],
                broker_connection_timeout=min(10.0, settings.webhook_timeout),
                broker_connection_retry_on_startup=True,
                **brokerqueues.sink_conf(settings.broker_queue_type),
            )
        self.app = app

    def send(self, event: OutboxEvent, attempt_no: int) -> None:
        envelope: dict[str, Any] = event.envelope
        try:
            self.app.send_task(
                self.spec.task,
                args=[envelope],
                queue=self.spec.queue,
                serializer="json",
                retry=True,
                retry_policy=_PUBLISH_RETRY,
            )
        except EncodeError:
            raise FatalError(
                f"celery {self.spec.display}: event {event.event_id} cannot be encoded as JSON"
            ) from None
        except (OperationalError, OSError) as exc:
            # kombu's message may carry the broker URL: name the class only.
            raise TransportError(f"celery {self.spec.display}: {type(exc).__name__}") from None

    def close(self) -> None:
        if self._own:
            self.app.close()
