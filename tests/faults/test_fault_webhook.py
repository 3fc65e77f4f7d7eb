"""A webhook receiver that is down for a while, then back.

The receiver first answers 503 with ``Retry-After`` (a load balancer with no
healthy backend), then is gone altogether (connection refused), then comes
back on the same URL. The retry schedule is compressed so that the outage is
shorter than the whole schedule: nothing may be dead-lettered, the receiver
must end with every event, in order, and the Redis-stream sink must never be
held up by the dead webhook.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from etbridge.redisserver import RedisServer
from tests.support.faults import STREAM_SINK, WEBHOOK_SECRET, RestartableReceiver, fault_run
from tests.support.fleet import read_sink, wait_for
from tests.support.grader import grade
from tests.support.receiver import Reply

pytestmark = pytest.mark.slow

# Attempts 1..8 wait 0, 1, 2, 3, 5, 8, 13, 21 s: 53 s before an event is dead-lettered.
SCHEDULE = "0,1,2,3,5,8,13,21"


def test_webhook_receiver_down_then_back_gets_everything(
    fault_redis: RedisServer, tmp_path: Path
) -> None:
    with (
        RestartableReceiver(WEBHOOK_SECRET) as rx,
        fault_run(
            tmp_path,
            fault_redis,
            orgs=3,
            bookings=20,
            seed=61,
            receiver=rx,
            ETBRIDGE_RETRY_SCHEDULE=SCHEDULE,
        ) as run,
    ):
        run.wait_baseline()
        run.sandbox.churn(3)
        down_from = len(rx.arrivals)
        rx.reply_default(Reply.unavailable(retry_after=2))
        wait_for(lambda: len(run.sandbox.log()) >= 10, 60, "changes while answering 503")
        rx.stop()
        outage_started = time.monotonic()
        # While the receiver is away, the stream sink keeps up with the truth.
        with run.client() as client:
            wait_for(lambda: len(run.sandbox.log()) >= 30, 60, "changes while the receiver is away")
            run.sandbox.churn(0)
            wait_for(
                lambda: not grade(read_sink(client), run.sandbox.truth()),
                60,
                "the stream sink to keep up while the webhook is down",
                interval=1.0,
            )
        outage = time.monotonic() - outage_started
        rx.reply_default(Reply.ok())
        rx.start()
        run.sandbox.churn(3)
        wait_for(lambda: len(run.sandbox.log()) >= 45, 60, "changes after the receiver is back")
        run.settle(90)
        run.check_api()
        run.check_logs()
        assert run.dead_letters() == 0
        refused = [a for a in rx.arrivals[down_from:] if a.status == 503]
        assert refused, "the receiver never answered 503"
        assert all(a.verified for a in rx.arrivals)
        print(f"receiver away {outage:.0f}s; 503s {len(refused)}; arrivals {len(rx.arrivals)}")


NEW_KEY = "whsec_cm90YXRlZC1mYXVsdC1zdWl0ZS1rZXktNjc4OQ=="


def test_key_rotation_through_the_fleet(fault_redis: RedisServer, tmp_path: Path) -> None:
    """A sink with its own secret holding the new and the old key, through real workers.

    The receiver still knows only the old key: every request verifies with it
    (and, checked here, with the new one), nothing is refused or dead-lettered,
    and no key reaches the fleet's logs.
    """
    with (
        RestartableReceiver(WEBHOOK_SECRET) as rx,
        fault_run(
            tmp_path,
            fault_redis,
            orgs=2,
            bookings=10,
            seed=67,
            receiver=rx,
            ETBRIDGE_SINKS=f"{STREAM_SINK},{rx.url}?secret=rotating",
            ETBRIDGE_WEBHOOK_SECRET="",
            ETBRIDGE_WEBHOOK_SECRET_ROTATING=f"{NEW_KEY} {WEBHOOK_SECRET}",
        ) as run,
    ):
        run.wait_baseline()
        run.sandbox.churn(3)
        wait_for(lambda: len(run.sandbox.log()) >= 15, 60, "changes to deliver")
        run.settle(90)
        run.check_logs()
        assert run.dead_letters() == 0
        assert rx.arrivals and all(a.verified for a in rx.arrivals)
        for arrival in rx.arrivals:
            headers = {
                "webhook-id": arrival.webhook_id,
                "webhook-timestamp": arrival.timestamp,
                "webhook-signature": arrival.signature,
            }
            assert len(arrival.signature.split(" ")) == 2
            Webhook(NEW_KEY).verify(arrival.body, headers)  # the receivers' next key works too
        logs = run.fleet.logs()
        assert NEW_KEY.removeprefix("whsec_") not in logs
        assert WEBHOOK_SECRET.removeprefix("whsec_") not in logs
