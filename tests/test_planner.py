"""The planner against a real Redis: a tick's warnings, logged once a setting, and
the send cursor that a sweep's confirmations push past them.

A tick reads only Redis when the orgs are configured (no discovery, no
token): its API and token URLs are ports nothing listens on.
"""

from __future__ import annotations

import logging
import time

import pytest
import redis

from etbridge import keys, planner, planstore, scheduler
from etbridge.pollhooks import Hooks
from etbridge.runtime import Runtime
from tests.support.sandbox import Sandbox
from tests.support.stack import runtime_for
from tests.test_status import make_settings

ORGS = [str(1000 + n) for n in range(6)]


def _tick(rt: Runtime) -> planner.Tick:
    rt.redis.delete(keys.DEFAULT.plan_lock)  # a new tick, however soon after the last
    planner._cache.clear()  # the allocation of this Redis, not one cached by another test
    return planner.tick(rt, 1.0)


def test_a_warning_is_logged_once_for_its_setting_while_its_figure_moves(
    r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Six orgs swept every 10 s would take 36 requests a minute of 30.
    settings = make_settings(redis_url, orgs=ORGS, rate_limit=30, sweep_interval=10)
    rt = Runtime(settings)
    caplog.set_level(logging.WARNING, logger="etbridge.planner")
    first = _tick(rt)
    (line,) = [w for w in first.warnings if w.startswith("ETBRIDGE_SWEEP_INTERVAL=10 ")]
    assert "cannot be met at ETBRIDGE_RATE_LIMIT=30" in line
    assert [m for m in caplog.messages if "ETBRIDGE_SWEEP_INTERVAL" in m] == [f"WARNING: {line}"]

    # The same setting with another figure (the estimates moved): status gets the
    # new figure, the log nothing more.
    summary = planstore.summary(r, keys.DEFAULT)
    summary["warnings"] = [line.replace("at the most", "or so") for line in summary["warnings"]]
    planstore.record_summary(r, keys.DEFAULT, summary)
    caplog.clear()
    assert _tick(rt).warnings == first.warnings
    assert not [m for m in caplog.messages if "ETBRIDGE_SWEEP_INTERVAL" in m]
    assert planstore.summary(r, keys.DEFAULT)["warnings"] == first.warnings

    # Met again, then not: a new episode is logged again.
    planstore.record_summary(
        r, keys.DEFAULT, {**planstore.summary(r, keys.DEFAULT), "warnings": []}
    )
    caplog.clear()
    _tick(rt)
    assert [m for m in caplog.messages if "ETBRIDGE_SWEEP_INTERVAL" in m] == [f"WARNING: {line}"]


def test_a_sweeps_confirmations_push_the_planners_sends_past_them(redis_url: str) -> None:
    limit = 600
    pace = scheduler.BUDGET_WINDOW / limit
    with Sandbox.start(orgs=1, bookings=30, seed=5, rate_limit=100_000) as sb:
        rt = runtime_for(sb, redis_url, orgs=["1001"], rate_limit=limit)
        asked: list[int] = []

        def confirming(n: int) -> None:
            asked.append(n)
            planstore.reserve_sends(rt.redis, keys.DEFAULT, n, limit)

        p = rt.poller(hooks=Hooks(on_confirming=confirming))
        p.poll("1001", "sweep")  # the baseline: nothing to confirm
        assert asked == []
        assert planstore.send_cursor(rt.redis, keys.DEFAULT) == 0.0
        sb.mutate(3, org="1001", kinds=["delete"])
        before = time.time()
        (result,) = p.poll("1001", "sweep")
        assert result.deleted == 3 and asked == [3]
        cursor = planstore.send_cursor(rt.redis, keys.DEFAULT)
        assert before + 3 * pace <= cursor <= time.time() + 3 * pace
        # A cursor already ahead (the planner's timed sends) is pushed from where it is.
        assert planstore.reserve_sends(rt.redis, keys.DEFAULT, 2, limit) == pytest.approx(
            cursor + 2 * pace
        )
        assert (
            0 < rt.redis.pttl(keys.DEFAULT.plan_cursor) <= (cursor + 2 * pace - before) * 1000 + 1
        )
