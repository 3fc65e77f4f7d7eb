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
from itertools import compress
from typing import NamedTuple

# A page cost never below this: a unit's cost is a divisor.
_TINY = 1e-9

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
    Every ``lo_i <= hi_i``.
    """
    return _fill(_slopes(weights, costs), costs, lows, highs, budget)


def _slopes(weights: Sequence[float], costs: Sequence[float]) -> list[float]:
    """``k_i = √(w_i/c_i)``: how fast each rate grows with ``t`` off its clamps."""
    return [
        math.sqrt(w / c) if w > 0 and c > 0 else 0.0 for w, c in zip(weights, costs, strict=True)
    ]


def _fill(
    ks: Sequence[float],
    costs: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    budget: float,
) -> list[float]:
    """:func:`waterfill` with the ``k_i`` computed (the allocation's two passes share them)."""
    floor_cost = math.fsum(map(operator.mul, costs, lows))
    if floor_cost >= budget:
        scale = budget / floor_cost if floor_cost > 0 else 0.0
        return [lo * scale for lo in lows]
    if math.fsum(map(operator.mul, costs, highs)) <= budget:
        return list(highs)
    # spend(t) = base + slope·t between breakpoints: at lo/k a unit leaves its
    # floor (the slope gains c·k, the base loses c·lo), at hi/k it reaches its
    # ceiling (the slope loses c·k, the base gains c·hi). A unit without a floor
    # leaves it at t = 0, before the walk: no breakpoint to sort.
    base, slope = floor_cost, 0.0
    at: list[float] = []
    dslope: list[float] = []
    dbase: list[float] = []
    for k, c, lo, hi in zip(ks, costs, lows, highs, strict=True):
        if k <= 0 or hi <= lo:
            continue
        ck = c * k
        if lo > 0:
            at.append(lo / k)
            dslope.append(ck)
            dbase.append(-c * lo)
        else:
            slope += ck
        at.append(hi / k)
        dslope.append(-ck)
        dbase.append(c * hi)
    if slope > 0 and base + slope * min(at, default=math.inf) >= budget:
        # Spent before the first breakpoint, where no unit has reached its ceiling
        # yet (the common case of a tight budget): nothing to sort.
        t = (budget - base) / slope
    else:
        t = 0.0
        for j in sorted(range(len(at)), key=at.__getitem__):
            x = at[j]
            if base + slope * x >= budget:
                break
            base += dbase[j]
            slope += dslope[j]
            t = x
        if slope > 0:
            t = (budget - base) / slope
    # clamp(k·t, lo, hi), spelt out: a comprehension without calls is the fast one.
    xs = [
        lo if x <= lo else hi if x >= hi else x
        for x, lo, hi in zip([k * t for k in ks], lows, highs, strict=True)
    ]
    # The running slope loses precision when weights span many orders of
    # magnitude; never let rounding spend more than the budget.
    spent = math.fsum(map(operator.mul, costs, xs))
    if spent > budget:
        scale = (budget - floor_cost) / (spent - floor_cost)
        xs = [lo + (x - lo) * scale for x, lo in zip(xs, lows, strict=True)]
    return xs


def allocate(demands: Sequence[Demand], limits: Limits) -> Allocation:
    """The poll and sweep rates of every unit (see docs/scheduling.md for the derivation)."""
    if not demands:
        return Allocation({}, 0.0, 0.0, True, True)
    keys, lam, dl, pp, sp, ceilings = zip(*demands, strict=True)
    return allocate_columns(keys, lam, dl, pp, sp, ceilings, limits)


def allocate_columns(
    keys: Sequence[Hashable],
    change_rates: Sequence[float],
    delete_rates: Sequence[float],
    poll_pages: Sequence[float],
    sweep_pages: Sequence[float],
    sweep_ceilings: Sequence[float | None],
    limits: Limits,
) -> Allocation:
    """:func:`allocate` on the demands' fields, one sequence each (no tuple per unit)."""
    n = len(keys)
    if not n:
        return Allocation({}, 0.0, 0.0, True, True)
    rate = max(limits.rate, 1e-9)
    f_hi = 1.0 / max(limits.poll_interval, 1e-6)
    # The sweep interval is what the operator asked for: sweeps run that often
    # when the budget allows, less often (as the optimum says) when it does not.
    g_hi = 1.0 / max(limits.sweep_interval, 1e-6)
    polled = [p > 0 for p in poll_pages]
    # One vector of 2n items: the polls, then the sweeps, sharing one multiplier.
    weights = [x / 2 for x in change_rates] + [x / 2 for x in delete_rates]
    costs = [p if p > _TINY else _TINY for p in poll_pages] + [
        x if x > 1.0 else 1.0 for x in sweep_pages
    ]
    g_his = [g_hi if c is None else c for c in sweep_ceilings]
    highs = [f_hi if p else 0.0 for p in polled] + g_his
    ks = _slopes(weights, costs)

    # Pass 1, no floors: the share of the budget that sweeps earn by their deletions.
    first = _fill(ks, costs, [0.0] * (2 * n), highs, rate)
    sweep_share = math.fsum(map(operator.mul, costs[n:], first[n:]))
    poll_pages_sum = math.fsum(compress(poll_pages, polled))
    poll_rate = max(rate - sweep_share, rate * 1e-3)
    cycle = poll_pages_sum / poll_rate if poll_pages_sum else 0.0

    # Pass 2: a tail floor of floor_cycles round-robin cycles of that poll share,
    # and the asked sweep interval where it still fits beside the poll floors.
    f_lo = min(f_hi, 1.0 / (limits.floor_cycles * cycle)) if cycle > 0 else 0.0
    poll_floor_cost = f_lo * poll_pages_sum
    sweep_floors = [hi if hi < g_hi else g_hi for hi in g_his]
    sweep_floor_met = (
        poll_floor_cost + math.fsum(map(operator.mul, costs[n:], sweep_floors)) <= rate
    )
    if not sweep_floor_met:
        sweep_floors = [0.0] * n
    lows = [f_lo if p else 0.0 for p in polled] + sweep_floors
    rates = _fill(ks, costs, lows, highs, rate)
    spent = math.fsum(map(operator.mul, costs, rates))
    polls, sweeps = rates[:n], rates[n:]
    result = dict(zip(keys, map(Rates, polls, sweeps), strict=True))
    poll_met = min(compress(polls, polled), default=math.inf) >= f_hi * (1 - 1e-9)
    if sweep_floor_met:
        sweep_floor_met = all(
            x >= lo * (1 - 1e-9) for x, lo in zip(sweeps, sweep_floors, strict=True)
        )
    return Allocation(result, spent, cycle, sweep_floor_met, poll_met)
