"""The suite's state, token, budget, outbox, poller, sink and status tests, re-run
against a real Redis Cluster.

Every Lua script and atomic step must touch one hash slot there (a cross-slot
script fails with CROSSSLOT), and fleet-wide reads must work without KEYS.
The fixtures of tests/engines/conftest.py swap the single Redis for the cluster.
The planner, discovery and due deliveries run in a real fleet on a cluster in
test_fault_cluster.py.
"""

from __future__ import annotations

from tests.test_auth import *  # noqa: F403
from tests.test_outbox import *  # noqa: F403
from tests.test_poller import *  # noqa: F403
from tests.test_ratelimit import *  # noqa: F403
from tests.test_sinks import *  # noqa: F403
from tests.test_state import *  # noqa: F403

# Both star-imported modules define a make_settings helper; the re-run tests use their own.
from tests.test_status import *  # type: ignore[assignment]  # noqa: F403

# Not about the state's Redis: a second Redis db (a cluster has db 0 only) and
# a Redis broker read back as lists (the broker here is memory://).
for _name in ("test_redis_stream_sink_on_another_redis_db", "test_celery_sink_publishes_json_task"):
    del globals()[_name]
