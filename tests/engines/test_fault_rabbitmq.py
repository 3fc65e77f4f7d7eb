"""RabbitMQ as the Celery broker: polls, deliveries and the celery:// sink, and a restart.

The fleet's broker is a real RabbitMQ node (Debian's rabbitmq-server, started
by the test); Redis (AOF) keeps the state and the stream sink. RabbitMQ is
restarted while deliveries run: durable queues and persistent messages
(Celery's defaults) bring the tasks back, so both sinks still match the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from etbridge.redisserver import RedisServer
from tests.support import celery_sink_app
from tests.support.engines import RABBITMQ_TEST, RabbitNode
from tests.support.faults import STREAM_SINK, collapse_copies, fault_run
from tests.support.fleet import celery_sink_worker, stop, wait_for
from tests.support.grader import grade

pytestmark = RABBITMQ_TEST
QUEUE = "etb-test-deliveries"


def test_rabbitmq_restart_during_deliveries_loses_nothing(
    rabbit: RabbitNode, fault_redis: RedisServer, tmp_path: Path
) -> None:
    sink = celery_sink_worker(rabbit.url, fault_redis.url, tmp_path / "sink-worker.log", QUEUE)
    try:
        with fault_run(
            tmp_path,
            fault_redis,
            orgs=3,
            bookings=20,
            seed=53,
            workers=2,
            ETBRIDGE_BROKER_URL=rabbit.url,
            ETBRIDGE_SINKS=f"{STREAM_SINK},celery://{QUEUE}/{celery_sink_app.TASK}",
        ) as run:

            def celery_problems() -> list[str]:
                with run.client() as client:
                    raw = client.lrange(celery_sink_app.RECEIVED, 0, -1)
                events, _copies, bad = collapse_copies([json.loads(x) for x in raw])
                return bad + grade(events, run.sandbox.truth())

            run.wait_baseline()
            run.sandbox.churn(4)
            wait_for(lambda: len(run.sandbox.log()) >= 25, 60, "churn before the restart")
            rabbit.restart()
            wait_for(lambda: len(run.sandbox.log()) >= 50, 90, "churn after the restart")
            run.settle(120, copies_allowed=True)
            wait_for(lambda: not celery_problems(), 60, "the celery sink to match the truth")
            run.check_api()
            assert run.dead_letters() == 0
            with run.client() as client:  # the tasks went through RabbitMQ, not Redis
                assert not client.exists("poll", "deliver", "plan", QUEUE)
            dead = [p.name for p in run.fleet.procs if not p.alive()]
            assert not dead, f"processes died with the restart: {dead}\n{run.fleet.logs()}"
    finally:
        stop(sink)
