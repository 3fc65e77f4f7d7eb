"""Redis (with AOF) restarted under a working fleet: once cleanly, once killed and down a while.

Redis is broker, state and the stream sink at once here, as in the simplest
production setup. With ``appendfsync always`` every acknowledged write
survives, so nothing may be lost; the workers and the beat must ride the
outage out and go on by themselves.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from etbridge.redisserver import RedisServer
from tests.support.faults import fault_run
from tests.support.fleet import wait_for

pytestmark = pytest.mark.slow


def test_redis_restarts_lose_nothing(fault_redis: RedisServer, tmp_path: Path) -> None:
    with fault_run(tmp_path, fault_redis, orgs=3, bookings=30, seed=31, workers=2) as run:
        run.wait_baseline()
        run.sandbox.churn(4)
        wait_for(lambda: len(run.sandbox.log()) >= 25, 60, "churn before the restart")
        # A clean restart: SIGTERM (Redis writes and fsyncs), start on the same port.
        fault_redis.restart()
        wait_for(lambda: len(run.sandbox.log()) >= 50, 60, "churn between the restarts")
        # A crash: SIGKILL, down for a few seconds, then back with what AOF holds.
        fault_redis.kill()
        time.sleep(4)  # the outage itself, not a synchronisation
        fault_redis.start()
        wait_for(lambda: len(run.sandbox.log()) >= 80, 60, "churn after the restarts")
        run.settle(120, copies_allowed=True)
        run.check_api()
        run.check_logs()
        assert run.dead_letters() == 0
        dead = [p.name for p in run.fleet.procs if not p.alive()]
        assert not dead, f"processes died with the Redis outage: {dead}\n{run.fleet.logs()}"
        print(f"copies {run.copies}")
