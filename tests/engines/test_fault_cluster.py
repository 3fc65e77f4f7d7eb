"""A Redis Cluster node restarted under a working fleet (state on the cluster, AOF on).

State, token, budget, outbox and the stream sink live on a real 3-master
cluster; the Celery broker is a separate Redis (a cluster cannot be one).
One master is restarted cleanly on its port, with its AOF and nodes.conf:
while it is away the cluster refuses every command (full coverage), and the
fleet must ride that out and lose nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from etbridge.redisserver import RedisServer
from tests.support.engines import RedisClusterSet, wait_until
from tests.support.faults import fault_run
from tests.support.fleet import wait_for

pytestmark = pytest.mark.slow


def test_a_cluster_node_restart_loses_nothing(fault_redis: RedisServer, tmp_path: Path) -> None:
    with (
        RedisClusterSet(appendonly=True) as cluster,
        fault_run(
            tmp_path,
            cluster,
            orgs=4,
            bookings=20,
            seed=59,
            workers=2,
            ETBRIDGE_BROKER_URL=fault_redis.url,
        ) as run,
    ):
        run.wait_baseline()
        run.sandbox.churn(4)
        wait_for(lambda: len(run.sandbox.log()) >= 25, 60, "churn before the restart")
        node = cluster.nodes[1]
        node.restart()
        wait_until(lambda: node_ok(node.port), 30, "the restarted node to rejoin the cluster")
        wait_for(lambda: len(run.sandbox.log()) >= 50, 60, "churn after the restart")
        run.settle(120, copies_allowed=True)
        run.check_api()
        run.check_logs()
        assert run.dead_letters() == 0
        dead = [p.name for p in run.fleet.procs if not p.alive()]
        assert not dead, f"processes died with the node restart: {dead}\n{run.fleet.logs()}"
        print(f"copies {run.copies}")


def node_ok(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=1) as client:
        return bool(client.cluster("INFO")["cluster_state"] == "ok")
