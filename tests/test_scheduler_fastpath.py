"""The shortcuts that keep a 10,000-unit tick cheap change no decision."""

from __future__ import annotations

import random

from etbridge import allocation, scheduler
from etbridge.scheduler import Budget, PlanConfig, RateEstimate, UnitView

NOW = 1_000_000.0


def fleet(rng: random.Random, n: int) -> list[UnitView]:
    def maybe(value: float) -> float | None:
        return None if rng.random() < 0.1 else value

    return [
        UnitView(
            str(i),
            rng.choice(["bookings", "contacts"]),
            busy=rng.random() < 0.05,
            retry_at=NOW + 5 if rng.random() < 0.05 else 0.0,
            baselined=rng.random() > 0.05,
            urgent_sweep=rng.random() < 0.03,
            sweeping=rng.random() < 0.05,
            sweeps_only=rng.random() < 0.05,
            last_poll_due=maybe(NOW - rng.uniform(0, 900)),
            last_sweep_due=maybe(NOW - rng.uniform(0, 3600)),
            changes=RateEstimate(rng.expovariate(0.2) * rng.choice([1, 20]), 600.0, NOW),
            deletions=RateEstimate(rng.expovariate(2.0), rng.uniform(0, 3600), NOW),
            poll_pages=rng.choice([1.0, 1.5, 3.0]),
            sweep_pages=float(rng.randint(1, 20)),
        )
        for i in range(n)
    ]


def test_dispatch_sends_every_unit_whose_next_deadline_falls_within_the_lookahead() -> None:
    # dispatch rules most units out before working out their deadline (_next):
    # with a budget that binds nothing, it must send exactly the units _next finds due
    # within the lookahead, counting the early window (_early) each may be sent in.
    for seed in range(20):
        rng = random.Random(seed)
        units = fleet(rng, 300)
        config = PlanConfig(
            poll_interval=rng.choice([1.0, 30.0]), sweep_interval=rng.choice([60.0, 3600.0])
        )
        alloc = scheduler.plan_rates(units, 400, config)
        pace = scheduler.BUDGET_WINDOW / 10**6
        for now in (NOW, NOW + 7.0, NOW + 400.0):
            horizon = now + config.lookahead
            expected = set()
            for u in units:
                if u.busy or u.retry_at > now:
                    continue
                rates = alloc.rates.get(u.key)
                step = scheduler._next(u, rates, now, config)
                if step is None:
                    continue
                early = scheduler._early(
                    step[2], scheduler._gap(step[2], rates, config), config, pace
                )
                if step[0] - early < horizon:
                    expected.add(u.key)
            decisions = scheduler.dispatch(now, units, alloc, Budget(10**6, 0), config)
            assert {(d.org_id, d.resource) for d in decisions} == expected, (seed, now)


def test_columns_match_the_demands() -> None:
    units = fleet(random.Random(1), 200)
    config = PlanConfig(poll_interval=30.0, sweep_interval=3600.0)
    bounds = scheduler.limits(units, 400, config)
    via_demands = allocation.allocate(scheduler.demands(units, config), bounds)
    assert scheduler.plan_rates(units, 400, config) == via_demands
