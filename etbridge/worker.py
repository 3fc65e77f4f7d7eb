"""The Celery app: ``celery -A etbridge.worker worker`` and ``celery -A etbridge.worker beat``.

This module only builds the app: configuration, queues, routes and the beat
schedule. The tasks live in tasks.py; what they call lives in the modules.
A configuration mistake stops the process here, with one line and no
traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from typing import Any

from celery import Celery, signals

from etbridge import brokerqueues, health, kombufix, logs, redisconn, shutdown
from etbridge.settings import Settings, SettingsError, load_settings

# Seconds between two planner ticks of beat.
PLAN_TICK = 1.0
# The longest a task may run: a sweep of thousands of pages is split into
# resumable slices long before this (poller.SWEEP_SLICE); an incremental poll lists
# only what changed since its watermark. On SIGTERM a poll stops at its next page
# and the worker exits within ETBRIDGE_SHUTDOWN_GRACE (etbridge.shutdown).
TASK_SOFT_LIMIT = 600
TASK_HARD_LIMIT = 660


def _load() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"etbridge: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load()

# A lost broker connection reconnects instead of stopping the worker (etbridge/kombufix.py).
kombufix.install()

app = Celery("etbridge", broker=settings.broker_url, include=["etbridge.tasks"])
app.conf.update(
    # JSON only: a task message is data, never code (pickle would run it).
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    # Tasks report through Redis state and logs; no result backend to fill up.
    task_ignore_result=True,
    # Ack after the task ran, and give a task back to the queue when its worker
    # dies, so a SIGKILLed poll or delivery is not lost with the worker...
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # ...and take one task at a time, so a busy worker does not sit on others' work
    # (with quorum queues the prefetch is per consumer, one consumer per queue).
    worker_prefetch_multiplier=1,
    # A stuck call ends: the soft limit raises inside the task, the hard one kills it.
    task_soft_time_limit=TASK_SOFT_LIMIT,
    task_time_limit=TASK_HARD_LIMIT,
    # Longer than any task and any countdown, or the Redis broker would hand a
    # running task to a second worker. Lost polls do not wait for it: the planner
    # re-plans an org as soon as its lease expires.
    broker_transport_options={
        "visibility_timeout": 3600,
        # A sentinel:// broker: the service name of ETBRIDGE_REDIS_URL (issue 17).
        **redisconn.broker_transport_options(settings.redis_url, settings.broker_url),
    },
    # Recycle children now and then: a slow leak never becomes an OOM kill.
    worker_max_tasks_per_child=1000,
    # Separate queues, so slow webhook receivers never starve polling and a
    # long poll backlog never delays the planner's tick. Classic or quorum queues
    # (ETBRIDGE_BROKER_QUEUE_TYPE, RabbitMQ only): etbridge/brokerqueues.py.
    task_queues=brokerqueues.task_queues(settings.broker_queue_type),
    task_default_queue="poll",
    task_routes={
        "etbridge.plan": {"queue": "plan"},
        "etbridge.trim": {"queue": "plan"},
        "etbridge.poll_org": {"queue": "poll"},
        "etbridge.deliver": {"queue": "deliver"},
    },
    # Beat keeps no state worth persisting (the planner's state is in Redis);
    # keep its schedule file out of the working directory.
    beat_schedule_filename=os.path.join(tempfile.gettempdir(), f"etbridge-beat-{os.getuid()}"),
    beat_schedule={
        "plan": {"task": "etbridge.plan", "schedule": PLAN_TICK, "options": {"expires": 10}},
        # Outbox retention (ETBRIDGE_OUTBOX_RETENTION); idempotent, so a second beat is harmless.
        "trim": {"task": "etbridge.trim", "schedule": 3600.0, "options": {"expires": 600}},
    },
    broker_connection_retry_on_startup=True,
    # When the broker connection drops, tasks still running are cancelled and
    # redelivered at once, instead of an hour later (the visibility timeout);
    # polls and deliveries are safe to run again.
    worker_cancel_long_running_tasks_on_connection_loss=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@signals.beat_init.connect
def _start_sender(**_: Any) -> None:
    """Beat publishes the planner's timed sends (etbridge/sender.py), of every application.

    With the apps file a thread follows ``etbridge apps reload`` and SIGHUP
    (appsreload.py, sender.py): senders start and stop as applications come and go.
    """
    from etbridge import sender, tasks

    senders = sender.Senders(settings, tasks.publish_poll)
    if not settings.apps_file:
        senders.sync()
        return
    with contextlib.suppress(ValueError):  # not the main thread: no SIGHUP, reload still works
        signal.signal(signal.SIGHUP, lambda *_: senders.hangup.set())
    threading.Thread(target=senders.watch, name="etbridge-apps", daemon=True).start()


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """etbridge's key=value (or JSON) lines for Celery's own logs too."""
    logs.configure(settings.log_format, settings.log_level)
    logs.add_settings_secrets(settings)
    if settings.apps_file:
        logging.getLogger("etbridge.worker").info(
            "serving the applications of ETBRIDGE_APPS_FILE: %s",
            ", ".join(app.name for app in settings.apps()),
        )


if settings.sentry_dsn is not None:
    from etbridge import sentry

    sentry.init(settings)

if settings.metrics_port is not None:
    from etbridge import metrics

    # Served by the worker's main process (worker_init); beat never sends that signal.
    metrics.connect_worker_signals(settings)

# A SIGTERM ends polls at the next page and the worker within ETBRIDGE_SHUTDOWN_GRACE.
shutdown.connect_signals(settings.shutdown_grace)

if settings.health_port is not None:
    # GET /healthz and /readyz from the worker's main process and from beat.
    health.connect_signals(settings)
