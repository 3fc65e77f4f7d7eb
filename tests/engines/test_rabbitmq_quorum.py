"""``ETBRIDGE_BROKER_QUEUE_TYPE=quorum``: a fleet on RabbitMQ quorum queues.

A real RabbitMQ node (Debian's rabbitmq-server) and a fleet (a worker, beat)
declaring ``plan``, ``poll`` and ``deliver`` as quorum queues, as RabbitMQ
itself reports (``rabbitmqctl list_queues``). Polls run, a webhook that is down
at first is retried on the retry schedule through the ``deliver`` queue, the
``celery://`` sink's queue is a quorum queue too, and every sink ends graded
against the sandbox's truth. A countdown task goes through Celery's native
delayed delivery (the ``celery_delayed_*`` queues) and runs after its delay.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from pathlib import Path

from celery import Celery

from etbridge import brokerqueues, keys, replies
from etbridge.redisserver import RedisServer
from etbridge.settings import parse_sink
from tests.support import celery_sink_app
from tests.support.engines import RABBITMQ_TEST, RabbitNode
from tests.support.faults import (
    STREAM_SINK,
    WEBHOOK_SECRET,
    FaultRun,
    RestartableReceiver,
    collapse_copies,
    fault_run,
)
from tests.support.fleet import celery_sink_worker, stop, wait_for
from tests.support.grader import grade

pytestmark = RABBITMQ_TEST
QUEUE = "etb-test-quorum-deliveries"
COUNTDOWN = 12


def _failed_attempts(run: FaultRun, sink_name: str) -> int:
    """The most failed attempts any org's partition at ``sink_name`` has recorded."""
    with contextlib.closing(run.client()) as client:
        orgs = [replies.text(raw) for raw in client.hkeys(keys.DEFAULT.orgs)]
        counts = [
            int(client.hget(keys.DEFAULT.relay_partition(org, sink_name), "attempts") or 0)
            for org in orgs
        ]
    return max(counts, default=0)


def _trims(run: FaultRun) -> list[float]:
    """When the fleet's workers logged an ``etbridge.trim`` run (epoch seconds)."""
    found = []
    for worker in run.workers():
        for line in worker.output().splitlines():
            if 'msg="outbox trimmed' in line and line.startswith("ts="):
                found.append(datetime.fromisoformat(line.split()[0][3:]).timestamp())
    return found


def _countdown_runs_late(rabbit: RabbitNode, run: FaultRun) -> None:
    """A countdown task waits in a delayed-delivery queue, then a worker runs it."""
    app = Celery("etb-countdown-probe", broker=rabbit.url, set_as_current=False)
    app.conf.update(
        task_queues=brokerqueues.task_queues("quorum"), broker_connection_retry_on_startup=True
    )
    before = len(_trims(run))
    try:
        sent = time.time()
        app.send_task("etbridge.trim", queue="plan", countdown=COUNTDOWN)

        def delayed() -> int:
            listing = rabbit.queues().items()
            return sum(m for n, (_t, m) in listing if n.startswith("celery_delayed_"))

        # Not handed to a worker to hold until its time: parked in RabbitMQ.
        wait_for(lambda: delayed() == 1, COUNTDOWN - 2, "the task in a celery_delayed_* queue")
        ran = wait_for(lambda: _trims(run)[before:], COUNTDOWN + 30, "the countdown task to run")
        assert ran[0] >= sent + COUNTDOWN - 0.5, f"ran {ran[0] - sent:.1f}s after it was sent"
    finally:
        app.close()


def _old_classic_deployment(rabbit: RabbitNode) -> None:
    """What a deployment on classic queues leaves behind, then the README's switch:
    the queues deleted (their exchanges may stay: the quorum ones have other names)."""
    app = Celery("etb-classic", broker=rabbit.url, set_as_current=False)
    app.conf.update(task_queues=brokerqueues.task_queues("classic"))
    try:
        for name in brokerqueues.NAMES:
            app.send_task("etbridge.trim", queue=name, expires=1)
    finally:
        app.close()
    assert {n: t for n, (t, _m) in rabbit.queues().items()} == dict.fromkeys(
        brokerqueues.NAMES, "classic"
    )
    for name in brokerqueues.NAMES:
        rabbit.ctl("delete_queue", name)


def test_quorum_queues_carry_polls_retries_and_countdowns(
    rabbit: RabbitNode, fault_redis: RedisServer, tmp_path: Path
) -> None:
    _old_classic_deployment(rabbit)
    receiver = RestartableReceiver(WEBHOOK_SECRET)  # not started: the webhook is down at first
    sink = celery_sink_worker(
        rabbit.url,
        fault_redis.url,
        tmp_path / "sink-worker.log",
        QUEUE,
        ETB_TEST_QUEUE_TYPE="quorum",
    )
    try:
        with fault_run(
            tmp_path,
            fault_redis,
            orgs=2,
            bookings=10,
            seed=71,
            workers=1,
            receiver=receiver,
            ETBRIDGE_BROKER_URL=rabbit.url,
            ETBRIDGE_BROKER_QUEUE_TYPE="quorum",
            ETBRIDGE_RETRY_SCHEDULE="0" + ",2" * 30,
            ETBRIDGE_SINKS=(
                f"{STREAM_SINK},{receiver.url},celery://{QUEUE}/{celery_sink_app.TASK}"
            ),
        ) as run:
            wait_for(
                lambda: (
                    {n: t for n, (t, _m) in rabbit.queues().items() if n in brokerqueues.NAMES}
                    == dict.fromkeys(brokerqueues.NAMES, "quorum")
                ),
                60,
                "plan, poll and deliver as quorum queues",
                interval=1.0,
            )
            assert rabbit.queues()[QUEUE][0] == "quorum"
            webhook = parse_sink(receiver.url).name
            wait_for(lambda: _failed_attempts(run, webhook) >= 3, 90, "webhook retries")
            assert not receiver.delivered_envelopes()
            receiver.start()
            run.sandbox.churn(4)
            wait_for(lambda: len(run.sandbox.log()) >= 15, 60, "some churn")
            run.settle(120)

            def celery_problems() -> list[str]:
                with contextlib.closing(run.client()) as client:
                    raw = client.lrange(celery_sink_app.RECEIVED, 0, -1)
                events, _copies, bad = collapse_copies([json.loads(x) for x in raw])
                return bad + grade(events, run.sandbox.truth())

            wait_for(lambda: not celery_problems(), 60, "the celery sink to match the truth")
            assert _failed_attempts(run, webhook) == 0  # the retries ended in a delivery
            assert run.dead_letters() == 0
            run.check_api()
            _countdown_runs_late(rabbit, run)
            with contextlib.closing(run.client()) as client:  # the tasks went through RabbitMQ
                assert not client.exists("poll", "deliver", "plan", QUEUE)
            dead = [p.name for p in run.fleet.procs if not p.alive()]
            assert not dead, f"processes died: {dead}\n{run.fleet.logs()}"
    finally:
        stop(sink)
        receiver.stop()
