"""SIGKILL of workers, again and again, while they poll and deliver.

Polls are kept slow (a few slow API answers, pages of 10) and the webhook
receiver answers after a short delay, so a kill finds polls and deliveries in
flight: the victim is chosen among workers that run one right now (Celery
remote control says which). Each killed worker is replaced at once; the beat is
killed once too.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from etbridge.planstore import QUEUED_TTL
from etbridge.poller import LEASE_TTL
from etbridge.redisserver import RedisServer
from tests.support.faults import (
    WEBHOOK_SECRET,
    RestartableReceiver,
    fault_run,
)
from tests.support.fleet import wait_for
from tests.support.receiver import Reply

pytestmark = pytest.mark.slow

KILLS = 12


def test_sigkilled_workers_lose_nothing(fault_redis: RedisServer, tmp_path: Path) -> None:
    rng = random.Random(9)
    with (
        RestartableReceiver(WEBHOOK_SECRET) as rx,
        fault_run(
            tmp_path,
            fault_redis,
            orgs=3,
            bookings=30,
            seed=21,
            workers=3,
            concurrency=2,
            receiver=rx,
            ETBRIDGE_PAGE_SIZE="10",
        ) as run,
    ):
        rx.reply_default(Reply(delay=0.3))
        run.wait_baseline()
        run.sandbox.faults(slow=0.4, slow_seconds=1.5)
        run.sandbox.churn(3)
        for n in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.0))
            run.kill_a_worker("etbridge.poll_org" if n % 2 == 0 else "etbridge.deliver", rng)
            if n == KILLS // 2:
                beat = next(p for p in run.fleet.procs if p.name.startswith("beat") and p.alive())
                beat.kill()
                run.fleet.beat()
        wait_for(lambda: len(run.sandbox.log()) >= 60, 60, "sixty mutations")
        # A poll lost with its worker frees its org when its lease expires; a poll message
        # lost in a killed worker's prefetch, when its queued mark does. That bounds recovery.
        last_kill = run.kills[-1].at
        took = run.settle(max(LEASE_TTL, QUEUED_TTL) + 60, copies_allowed=True)
        recovered = time.monotonic() - last_kill
        run.check_api()
        run.check_logs()
        assert run.dead_letters() == 0
        busy = [k for k in run.kills if k.doing]
        assert len(busy) >= KILLS // 2, [(k.name, k.doing) for k in run.kills]
        print(
            f"settled in {took:.0f}s, {recovered:.0f}s after the last kill; "
            f"copies {run.copies}; kills {[(k.name, k.doing) for k in run.kills]}"
        )
