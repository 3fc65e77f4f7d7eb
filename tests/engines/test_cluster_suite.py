"""The suite's state, token, budget and outbox tests, re-run against a real Redis Cluster.

Every Lua script and atomic step must touch one hash slot there (a cross-slot
script fails with CROSSSLOT), and fleet-wide reads must work without KEYS.
The fixtures of tests/engines/conftest.py swap the single Redis for the cluster.
"""

from __future__ import annotations

from tests.test_auth import *  # noqa: F403
from tests.test_outbox import *  # noqa: F403
from tests.test_ratelimit import *  # noqa: F403
from tests.test_state import *  # noqa: F403
