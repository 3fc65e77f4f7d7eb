"""The suite's state, token, budget, outbox, poller, sink and status tests, re-run
against a real Redis Cluster.

Every Lua script and atomic step must touch one hash slot there (a cross-slot
script fails with CROSSSLOT), and fleet-wide reads must work without KEYS.
The fixtures of tests/engines/conftest.py swap the single Redis for the cluster.
The planner, discovery and due deliveries run in a real fleet on a cluster in
test_fault_cluster.py.
"""

from __future__ import annotations

from tests import test_poller
from tests.test_auth import *  # noqa: F403
from tests.test_oauth import *  # noqa: F403
from tests.test_outbox import *  # noqa: F403
from tests.test_poller import *  # noqa: F403
from tests.test_ratelimit import *  # noqa: F403
from tests.test_sinks import *  # noqa: F403
from tests.test_state import *  # noqa: F403
from tests.test_status import *  # noqa: F403
from tests.test_tokencache import *  # noqa: F403
from tests.test_tokenfailure import *  # noqa: F403

# A fixture several modules define goes to the last star import: test_poller's
# sandbox serves every re-run test (the token tests need no more than any sandbox).
sandbox = test_poller.sandbox

# Not about the state's Redis: a second Redis db (a cluster has db 0 only) and
# a Redis broker read back as lists (the broker here is memory://).
for _name in ("test_redis_stream_sink_on_another_redis_db", "test_celery_sink_publishes_json_task"):
    del globals()[_name]
