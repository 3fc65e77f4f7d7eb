"""How often to poll and to sweep each (org, resource): the budget split that minimises latency.

Pure: it chooses poll rates ``f_i`` and sweep rates ``g_i`` that minimise the
expected detection latency ``Σ λ_i/(2 f_i) + Σ δ_i/(2 g_i)`` within the
request rate the budget allows, with clamps that bound every unit's tail. The
closed form (square-root rule, water-filling on the multiplier), its
assumptions and the two-pass floor are derived in docs/scheduling.md.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# A unit is first polled at least every ``FLOOR_CYCLES`` round-robin cycles of
# its poll share, whatever its activity: the tail bound (docs/scheduling.md).
FLOOR_CYCLES = 1.25


class Demand(NamedTuple):
    """One planning unit (an org's resource) as the estimates see it."""

    key: Hashable
    change_rate: float  # λ: creates and updates a second (estimate, prior included)
    delete_rate: float  # δ: deletions a second
    poll_pages: float = 1.0  # p: requests of one incremental poll (0: never polled incrementally)
    sweep_pages: float = 1.0  # s: requests of one complete listing
    # The most sweeps a second; None: 1/sweep_interval. A unit polled by sweeps
    # only (the API rejects its incremental filter) may be swept as often as polled.
    sweep_ceiling: float | None = None


@dataclass(frozen=True)
class Limits:
    rate: float  # requests a second the allocation may spend (the budget less a reserve)
    poll_interval: float  # the shortest gap between two incremental polls of a unit
    sweep_interval: float  # the sweep interval asked for (kept when affordable)
    floor_cycles: float = FLOOR_CYCLES


class Rates(NamedTuple):
    # Tuples, not dataclasses: a tick builds one per unit, 10,000 of them.
    poll: float  # f: incremental polls a second
    sweep: float  # g: complete sweeps a second

    @property
    def poll_every(self) -> float:
        return 1.0 / self.poll if self.poll > 0 else math.inf

    @property
    def sweep_every(self) -> float:
        return 1.0 / self.sweep if self.sweep > 0 else math.inf


@dataclass(frozen=True)
class Allocation:
    rates: dict[Hashable, Rates]
    cost: float  # requests a second the rates spend
    cycle: float  # T: seconds for one poll of every unit within the poll share (round-robin)
    sweep_floor_met: bool  # every unit is swept at least every sweep_interval
    poll_interval_met: bool  # every polled unit is polled every poll_interval

    def expected_latency(self, demands: Sequence[Demand]) -> float:
        """Mean detection latency over all changes (deletions included) these rates give."""
        total = sum(d.change_rate + d.delete_rate for d in demands)
        if total <= 0:
            return 0.0
        cost = 0.0
        for d in demands:
            r = self.rates[d.key]
            if d.change_rate > 0 and r.poll > 0:
                cost += d.change_rate / (2 * r.poll)
            if d.delete_rate > 0 and r.sweep > 0:
                cost += d.delete_rate / (2 * r.sweep)
        return cost / total


def waterfill(
    weights: Sequence[float],
    costs: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    budget: float,
) -> list[float]:
    """Minimise ``Σ w_i / x_i`` subject to ``Σ c_i x_i <= budget`` and ``lo_i <= x_i <= hi_i``.

    The optimum is ``x_i = clamp(k_i · t, lo_i, hi_i)`` with ``k_i = √(w_i/c_i)``
    and one ``t`` (``1/√μ``, the multiplier) for all, chosen so the budget is
    spent exactly: the spend is piecewise linear in ``t``, so one sort of the
    breakpoints finds it. Floors that do not fit are scaled down together.
    """
    n = len(weights)
    floor_cost = sum(c * lo for c, lo in zip(costs, lows, strict=True))
    if floor_cost >= budget:
        scale = budget / floor_cost if floor_cost > 0 else 0.0
        return [lo * scale for lo in lows]
    if sum(c * hi for c, hi in zip(costs, highs, strict=True)) <= budget:
        return list(highs)
    ks = [math.sqrt(w / c) if w > 0 and c > 0 else 0.0 for w, c in zip(weights, costs, strict=True)]
    # Breakpoints: at lo/k a unit leaves its floor, at hi/k it reaches its ceiling.
    # Two sorted index lists merged as they are walked (cheaper than sorting tuples).
    moving = [i for i in range(n) if ks[i] > 0 and highs[i] > lows[i]]
    leave = {i: lows[i] / ks[i] for i in moving}
    reach = {i: highs[i] / ks[i] for i in moving}
    by_leave = sorted(moving, key=leave.__getitem__)
    by_reach = sorted(moving, key=reach.__getitem__)
    base, slope = floor_cost, 0.0
    t = 0.0
    a = b = 0
    m = len(moving)
    while b < m:
        if a < m and leave[by_leave[a]] <= reach[by_reach[b]]:
            i, at, leaving = by_leave[a], leave[by_leave[a]], True
        else:
            i, at, leaving = by_reach[b], reach[by_reach[b]], False
        if base + slope * at >= budget:
            break
        ck = costs[i] * ks[i]
        if leaving:
            base -= costs[i] * lows[i]
            slope += ck
            a += 1
        else:
            slope -= ck
            base += costs[i] * highs[i]
            b += 1
        t = at
    if slope > 0:
        t = (budget - base) / slope
    xs = [min(highs[i], max(lows[i], ks[i] * t)) for i in range(n)]
    # The running slope loses precision when weights span many orders of
    # magnitude; never let rounding spend more than the budget.
    spent = sum(c * x for c, x in zip(costs, xs, strict=True))
    if spent > budget:
        scale = (budget - floor_cost) / (spent - floor_cost)
        xs = [lo + (x - lo) * scale for x, lo in zip(xs, lows, strict=True)]
    return xs


def allocate(demands: Sequence[Demand], limits: Limits) -> Allocation:
    """The poll and sweep rates of every unit (see docs/scheduling.md for the derivation)."""
    if not demands:
        return Allocation({}, 0.0, 0.0, True, True)
    rate = max(limits.rate, 1e-9)
    f_hi = 1.0 / max(limits.poll_interval, 1e-6)
    # The sweep interval is what the operator asked for: sweeps run that often
    # when the budget allows, less often (as the optimum says) when it does not.
    g_hi = 1.0 / max(limits.sweep_interval, 1e-6)
    keys, lam, dl, pp, sp, ceilings = zip(*demands, strict=True)
    polled = [p > 0 for p in pp]
    # One vector of 2n items: the polls, then the sweeps, sharing one multiplier.
    weights = [x / 2 for x in lam] + [x / 2 for x in dl]
    costs = [p if p > 1e-9 else 1e-9 for p in pp] + [x if x > 1.0 else 1.0 for x in sp]
    g_his = [g_hi if c is None else c for c in ceilings]
    highs = [f_hi if p else 0.0 for p in polled] + g_his
    n = len(demands)

    # Pass 1, no floors: the share of the budget that sweeps earn by their deletions.
    first = waterfill(weights, costs, [0.0] * (2 * n), highs, rate)
    sweep_share = math.fsum(map(operator.mul, costs[n:], first[n:]))
    poll_pages = math.fsum(p for p in pp if p > 0)
    poll_rate = max(rate - sweep_share, rate * 1e-3)
    cycle = poll_pages / poll_rate if poll_pages else 0.0

    # Pass 2: a tail floor of floor_cycles round-robin cycles of that poll share,
    # and the asked sweep interval where it still fits beside the poll floors.
    f_lo = min(f_hi, 1.0 / (limits.floor_cycles * cycle)) if cycle > 0 else 0.0
    poll_floor_cost = f_lo * poll_pages
    g_lo = g_hi
    sweep_floor_cost = math.fsum(c * min(g_lo, hi) for c, hi in zip(costs[n:], g_his, strict=True))
    sweep_floor_met = poll_floor_cost + sweep_floor_cost <= rate
    if not sweep_floor_met:
        g_lo = 0.0
    lows = [f_lo if p else 0.0 for p in polled] + [min(g_lo, hi) for hi in g_his]
    rates = waterfill(weights, costs, lows, highs, rate)
    spent = math.fsum(map(operator.mul, costs, rates))
    result = dict(zip(keys, map(Rates, rates[:n], rates[n:]), strict=True))
    poll_met = all(x >= f_hi * (1 - 1e-9) for x, p in zip(rates, polled, strict=False) if p)
    if sweep_floor_met:
        sweep_floor_met = all(
            x >= lo * (1 - 1e-9) for x, lo in zip(rates[n:], lows[n:], strict=True)
        )
    return Allocation(result, spent, cycle, sweep_floor_met, poll_met)
