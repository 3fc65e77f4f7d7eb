"""The allocation: optimality conditions, clamps, edge cases, and properties of random fleets."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etbridge.allocation import Demand, Limits, allocate, waterfill

LIMITS = Limits(rate=100 / 61, poll_interval=1.0, sweep_interval=3600.0)


def fleet(rates: list[float], delete: float = 1e-5, pages: float = 1.0) -> list[Demand]:
    return [Demand(str(i), r, delete, pages, 2.0) for i, r in enumerate(rates)]


def test_no_units_and_one_unit() -> None:
    assert allocate([], LIMITS).rates == {}
    one = allocate(fleet([0.1]), LIMITS)
    # One org and a budget of 1.6 requests a second: polled at its poll interval.
    assert one.rates["0"].poll == pytest.approx(1.0)
    assert one.poll_interval_met


def test_uniform_churn_reduces_to_round_robin() -> None:
    demands = fleet([0.05] * 10)
    alloc = allocate(demands, LIMITS)
    polls = {r.poll for r in alloc.rates.values()}
    assert max(polls) - min(polls) < 1e-12
    # The whole budget is spent; sweeps at least at their floor (more where deletions pay).
    assert alloc.cost == pytest.approx(LIMITS.rate)
    assert alloc.rates["0"].sweep >= 1 / 3600
    quiet = allocate(fleet([0.05] * 10, delete=0.0), LIMITS)
    assert quiet.rates["0"].sweep == pytest.approx(1 / 3600)
    assert alloc.sweep_floor_met


def test_square_root_rule_between_unclamped_units() -> None:
    # Two hot orgs among many: their rates are above the floor and follow √λ.
    demands = fleet([0.4, 0.1] + [0.001] * 38)
    alloc = allocate(demands, LIMITS)
    hot, warm = alloc.rates["0"].poll, alloc.rates["1"].poll
    assert hot / warm == pytest.approx(2.0, rel=1e-9)
    floor = 1 / (LIMITS.floor_cycles * alloc.cycle)
    assert all(alloc.rates[str(i)].poll == pytest.approx(floor) for i in range(2, 40))


def test_eighty_twenty_gains_what_the_analysis_says() -> None:
    # 10 orgs: 2 hot ones take 80 % of the changes. The floor binds the cold ones.
    demands = fleet([0.16, 0.16] + [0.01] * 8, delete=0.0)
    alloc = allocate(demands, LIMITS)
    round_robin = 10 / LIMITS.rate / 2  # mean latency T/2
    assert alloc.expected_latency(demands) / round_robin == pytest.approx(0.694, abs=0.01)


def test_ceiling_poll_interval() -> None:
    alloc = allocate(fleet([1.0] * 3), Limits(rate=10.0, poll_interval=5.0, sweep_interval=60))
    assert all(r.poll == pytest.approx(0.2) for r in alloc.rates.values())
    assert alloc.poll_interval_met


def test_budget_below_the_org_count_scales_floors_down() -> None:
    # 200 orgs and 10 requests a minute: nobody can be polled every cycle, but all are polled.
    demands = fleet([0.01] * 200)
    alloc = allocate(demands, Limits(rate=10 / 61, poll_interval=1, sweep_interval=3600))
    assert alloc.cost == pytest.approx(10 / 61)
    assert all(r.poll > 0 for r in alloc.rates.values())
    assert not alloc.poll_interval_met


def test_unaffordable_sweep_interval_is_traded_against_polls() -> None:
    # The deletion-heavy shape: 30/min, 6 orgs of 2 pages, sweeps asked every 10 s.
    demands = fleet([1 / 12] * 6, delete=1 / 60)
    limits = Limits(rate=30 / 61, poll_interval=1.0, sweep_interval=10.0)
    alloc = allocate(demands, limits)
    assert not alloc.sweep_floor_met
    r = alloc.rates["0"]
    # Optimality: g/f = √(δ p / (λ s)).
    assert r.sweep / r.poll == pytest.approx(math.sqrt((1 / 60) / (1 / 12 * 2)), rel=1e-9)
    assert r.sweep_every < 90  # deletions are still found within a minute and a half
    assert alloc.cost == pytest.approx(limits.rate)


def test_all_quiet_still_spends_the_budget() -> None:
    demands = fleet([1e-6] * 20, delete=1e-9)
    alloc = allocate(demands, LIMITS)
    assert alloc.cost == pytest.approx(LIMITS.rate)


def test_units_that_are_not_polled_incrementally() -> None:
    demands = [Demand("a", 0.1, 0.0, 1.0, 1.0), Demand("b", 0.1, 0.1, 0.0, 3.0)]
    alloc = allocate(demands, LIMITS)
    assert alloc.rates["b"].poll == 0.0
    assert alloc.rates["b"].sweep > 0


def test_waterfill_meets_the_kkt_conditions() -> None:
    rng = random.Random(7)
    n = 50
    w = [rng.random() for _ in range(n)]
    c = [rng.choice([1.0, 2.0, 3.0]) for _ in range(n)]
    lo = [0.01] * n
    hi = [0.5] * n
    x = waterfill(w, c, lo, hi, 5.0)
    assert sum(ci * xi for ci, xi in zip(c, x, strict=True)) == pytest.approx(5.0)
    # Every unclamped unit has the same marginal gain per request: w / (c x²) = μ.
    marginal = [w[i] / (c[i] * x[i] ** 2) for i in range(n) if lo[i] < x[i] < hi[i]]
    assert len(marginal) > 5
    assert max(marginal) / min(marginal) == pytest.approx(1.0, rel=1e-9)
    mu = marginal[0]
    # Clamped ones would gain less (at the ceiling: more) than μ by moving.
    for i in range(n):
        if x[i] == lo[i]:
            assert w[i] / (c[i] * lo[i] ** 2) <= mu * (1 + 1e-9)
        if x[i] == hi[i]:
            assert w[i] / (c[i] * hi[i] ** 2) >= mu * (1 - 1e-9)


demand_lists = st.lists(
    st.tuples(
        st.floats(0, 5),
        st.floats(0, 1),
        st.sampled_from([0.0, 1.0, 1.5, 3.0]),
        st.floats(1, 50),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    demand_lists,
    st.floats(0.01, 100),
    st.floats(0.5, 120),
    st.floats(10, 86400),
)
def test_properties(
    raw: list[tuple[float, float, float, float]], rate: float, poll: float, sweep: float
) -> None:
    demands = [Demand(i, lam, dl, p, s) for i, (lam, dl, p, s) in enumerate(raw)]
    limits = Limits(rate=rate, poll_interval=poll, sweep_interval=sweep)
    alloc = allocate(demands, limits)
    # Never above the budget, never more often than the poll interval.
    assert alloc.cost <= rate * (1 + 1e-9)
    for d in demands:
        r = alloc.rates[d.key]
        assert 0 <= r.poll <= 1 / poll * (1 + 1e-9)
        assert r.sweep >= 0
        if d.poll_pages == 0:
            assert r.poll == 0
    polled = [d for d in demands if d.poll_pages > 0]
    floors_fit = sum(d.poll_pages for d in polled) / (limits.floor_cycles * alloc.cycle or 1)
    if polled and floors_fit < rate * (1 - 1e-9):
        floor = min(1 / poll, 1 / (limits.floor_cycles * alloc.cycle))
        for d in polled:
            assert alloc.rates[d.key].poll >= floor * (1 - 1e-9)
    if alloc.sweep_floor_met:
        assert all(alloc.rates[d.key].sweep >= 1 / sweep * (1 - 1e-9) for d in demands)


def test_ten_thousand_units_is_fast_enough_to_run_every_tick() -> None:
    # Not a timing test (the benchmark measures CPU); it only shows the size is handled.
    rng = random.Random(1)
    demands = [Demand(i, rng.expovariate(100), 1e-5, 1.0, 3.0) for i in range(10_000)]
    alloc = allocate(demands, Limits(rate=400 / 61, poll_interval=30, sweep_interval=3600))
    assert len(alloc.rates) == 10_000
    assert alloc.cost == pytest.approx(400 / 61)
