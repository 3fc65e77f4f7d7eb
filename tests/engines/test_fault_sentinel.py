"""A Sentinel failover under a working fleet, graded against the sandbox's truth.

Redis is state, broker (kombu's sentinel:// transport, derived from
ETBRIDGE_REDIS_URL) and stream sink at once. Page commits WAIT for the
replica (ETBRIDGE_REDIS_WAIT_REPLICAS=1), so a commit the fleet counted
survives the crash of the master: 0 lost changes, copies only as same-id
copies, the token and the budget intact (no expired token, no window over).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engines import SentinelSet
from tests.support.faults import fault_run
from tests.support.fleet import wait_for

pytestmark = pytest.mark.slow


def test_a_failover_during_churn_loses_nothing(tmp_path: Path) -> None:
    with (
        SentinelSet() as sentinels,
        fault_run(
            tmp_path,
            sentinels,
            orgs=3,
            bookings=20,
            seed=47,
            workers=2,
            ETBRIDGE_REDIS_WAIT_REPLICAS="1",
        ) as run,
    ):
        run.wait_baseline()
        run.sandbox.churn(4)
        wait_for(lambda: len(run.sandbox.log()) >= 25, 60, "churn before the failover")
        old = sentinels.master_port()
        assert sentinels.kill_master() != old
        wait_for(lambda: len(run.sandbox.log()) >= 50, 60, "churn after the failover")
        run.settle(120, copies_allowed=True)
        run.check_api()
        run.check_logs()
        assert run.dead_letters() == 0
        dead = [p.name for p in run.fleet.procs if not p.alive()]
        assert not dead, f"processes died with the failover: {dead}\n{run.fleet.logs()}"
        print(f"copies {run.copies}")
