"""The planner: pure decisions over plain data."""

from __future__ import annotations

import random

from etbridge import scheduler
from etbridge.scheduler import Budget, OrgView, PlanConfig

CFG = PlanConfig(poll_interval=30, sweep_interval=3600, tick=2)
NOW = 1_000_000.0


def org(i: int, **kw: object) -> OrgView:
    base: dict[str, object] = {
        "org_id": str(i),
        "baselined": True,
        "last_sweep": NOW - 10,
        "last_planned": NOW - 100,
    }
    base.update(kw)
    return OrgView(**base)  # type: ignore[arg-type]


def test_nothing_while_paused_or_without_orgs() -> None:
    assert scheduler.plan(NOW, [org(1)], Budget(100, 0, paused_for=3), CFG) == []
    assert scheduler.plan(NOW, [], Budget(100, 0), CFG) == []


def test_never_more_than_the_budget_left() -> None:
    orgs = [org(i) for i in range(50)]
    decisions = scheduler.plan(NOW, orgs, Budget(limit=100, used=97), CFG)
    assert len(decisions) == 3
    assert scheduler.plan(NOW, orgs, Budget(limit=100, used=90, inflight=10), CFG) == []


def test_paced_per_tick() -> None:
    orgs = [org(i) for i in range(50)]
    decisions = scheduler.plan(NOW, orgs, Budget(limit=100, used=0), CFG)
    # 100/min over a 2 s tick is 3.3 requests, rounded up.
    assert len(decisions) == 4


def test_respects_poll_interval_and_busy() -> None:
    orgs = [org(1, last_planned=NOW - 10), org(2, busy=True), org(3, retry_at=NOW + 5), org(4)]
    decisions = scheduler.plan(NOW, orgs, Budget(limit=1000, used=0), CFG)
    assert [d.org_id for d in decisions] == ["4"]


def test_baseline_and_sweeps_first() -> None:
    orgs = [org(1), org(2, baselined=False), org(3, last_sweep=NOW - 4000)]
    decisions = scheduler.plan(NOW, orgs, Budget(limit=1000, used=0), CFG)
    assert decisions[0] == scheduler.Decision("2", "sweep", "baseline")
    assert decisions[1] == scheduler.Decision("3", "sweep", "sweep")
    assert ("1", "incremental") in [(d.org_id, d.mode) for d in decisions]


def test_at_most_max_sweeps_at_once() -> None:
    orgs = [org(i, baselined=False) for i in range(6)]
    decisions = scheduler.plan(NOW, orgs, Budget(limit=10000, used=0), CFG)
    assert len([d for d in decisions if d.mode == "sweep"]) == CFG.max_sweeps


def test_ample_budget_polls_longest_waiting_first() -> None:
    orgs = [org(1, last_planned=NOW - 40), org(2, last_planned=NOW - 90, activity=0)]
    decisions = scheduler.plan(NOW, orgs, Budget(limit=1000, used=0), CFG)
    assert [d.org_id for d in decisions] == ["2", "1"]


def _simulate(n_orgs: int, active: set[int], limit: int, adaptive: bool, seconds: int) -> dict:
    """A small discrete simulation: each planned poll costs one request."""
    now = NOW
    last: dict[int, float] = dict.fromkeys(range(n_orgs), NOW - 1000)
    grants: list[float] = []
    polls = dict.fromkeys(range(n_orgs), 0)
    gaps: dict[int, list[float]] = {i: [] for i in range(n_orgs)}
    for _ in range(int(seconds / CFG.tick)):
        now += CFG.tick
        grants = [g for g in grants if g > now - 60]
        views = [
            org(
                i,
                last_planned=last[i],
                activity=(3.0 if i in active else 0.0) if adaptive else 0.0,
            )
            for i in range(n_orgs)
        ]
        for d in scheduler.plan(now, views, Budget(limit=limit, used=len(grants)), CFG):
            i = int(d.org_id)
            gaps[i].append(now - last[i])
            last[i] = now
            polls[i] += 1
            grants.append(now)
    return {"polls": polls, "gaps": gaps}


def test_short_budget_favours_active_orgs_without_starving_others() -> None:
    result = _simulate(20, active={0, 1}, limit=30, adaptive=True, seconds=1800)
    polls = result["polls"]
    quiet = [polls[i] for i in range(2, 20)]
    # The active orgs reach the poll_interval floor (every 30 s); the quiet share the rest.
    assert min(polls[0], polls[1]) > 1.3 * max(quiet)
    assert min(polls[0], polls[1]) >= 1800 / CFG.poll_interval - 2
    bound = scheduler.latency_bound(20, 30, CFG)
    worst = max(max(g[1:]) for g in result["gaps"].values() if len(g) > 1)
    assert worst <= bound + CFG.tick
    assert min(quiet) > 0


def test_rate_stays_within_limit_in_simulation() -> None:
    rng = random.Random(4)
    active = set(rng.sample(range(40), 5))
    result = _simulate(40, active=active, limit=100, adaptive=True, seconds=600)
    assert sum(result["polls"].values()) <= 100 * 600 / 60 + 5


def test_cycle_and_bound() -> None:
    assert scheduler.cycle_interval(10, 100, CFG) == 30
    assert scheduler.cycle_interval(100, 100, CFG) == 60
    assert scheduler.latency_bound(10, 100, CFG) == 32
    assert scheduler.latency_bound(100, 100, CFG) == 1.25 * 60 + 2
    assert scheduler.sweep_affordable(10, 1, 100, CFG)
    assert not scheduler.sweep_affordable(1000, 50, 100, CFG)


def test_decay() -> None:
    assert scheduler.decay(8.0, scheduler.ACTIVITY_HALF_LIFE) == 4.0
    assert scheduler.decay(8.0, -1) == 8.0
