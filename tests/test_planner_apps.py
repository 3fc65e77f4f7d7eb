"""The planner's tick of every application (planner.tick_apps), on a real Redis.

Each application plans within its own budget and keyspace; the workers' slots
are the fleet's and shared max-min fair by what each has due, so a hot
application's backlog does not take the slots of a quiet one; one
application's failure skips only it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from etbridge import planner, scheduler
from etbridge.runtime import Runtime
from tests.test_status import make_settings

HOT = [str(2001 + n) for n in range(30)]
QUIET = ["3001", "3002"]


def runtimes(redis_url: str, tmp_path: Path) -> list[Runtime]:
    path = tmp_path / "apps.toml"
    path.write_text(
        f'[apps.hot]\nclient_id = "hot"\nclient_secret = "hot-secret"\nrate_limit = 6000\n'
        f'orgs = {HOT!r}\nsinks = "redis-stream:hot:events"\n'.replace("'", '"')
        + f'[apps.quiet]\nclient_id = "quiet"\nclient_secret = "quiet-secret"\n'
        f'orgs = {QUIET!r}\nsinks = "redis-stream:quiet:events"\n'.replace("'", '"')
    )
    base = make_settings(redis_url, apps_file=str(path))
    return [Runtime(app.settings(base)) for app in base.apps()]


@pytest.fixture(autouse=True)
def _fresh_allocations() -> None:
    planner._cache.clear()


def test_the_workers_slots_are_shared_fairly_among_applications(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    hot, quiet = runtimes(redis_url, tmp_path)
    # Nothing measured yet: the fleet may hand out MIN_WAITING polls this tick.
    ticks = planner.tick_apps([hot, quiet], 1.0)
    got = {app: len(t.decisions) for app, t in ticks.items()}
    assert got == {"quiet": 2, "hot": scheduler.MIN_WAITING - 2}
    assert {d.org_id for d in ticks["quiet"].decisions} == set(QUIET)
    # Alone, the hot application takes every slot.
    planner._cache.clear()
    r.flushdb()
    alone = planner.tick_apps([hot], 1.0)
    assert len(alone["hot"].decisions) == scheduler.MIN_WAITING


def test_one_applications_failure_skips_only_it(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    hot, quiet = runtimes(redis_url, tmp_path)
    r.hset(hot.keyspace.plan_summary, "not", "a string")  # its tick's read fails: WRONGTYPE
    ticks = planner.tick_apps([hot, quiet], 1.0)
    assert ticks["hot"].skipped.startswith("failed")
    assert {d.org_id for d in ticks["quiet"].decisions} == set(QUIET)
