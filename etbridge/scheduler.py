"""Which polls to start now: pure planning within the fleet's request budget.

The request budget, not CPU, decides how fast a change is seen: with ``B``
requests a minute and ``O`` orgs, polling every org once costs ``O`` requests,
so plain round-robin sees each org every ``60·O/B`` seconds at best. The
planner spends the same budget where changes happen:

- Budget first. A tick never plans more expected requests than the budget can
  serve now (the limit minus what the last 60 s used minus what is already
  queued), paced to the budget's rate, so no backlog grows in the queue.
- No org more often than ``poll_interval``; no org starves: an org that has
  waited ``max_backoff`` (1.25) budget cycles of ``60·O/B`` goes first,
  whatever its activity.
- Adaptive only while the budget is short: orgs that changed recently weigh
  more (``1 + activity``, capped), quiet ones back off to at most
  ``max_backoff`` cycles. When the budget can poll every due org, it does,
  longest-waiting first, so budget that would go unused is never left idle.
- Sweeps (deletion detection, baselines, resyncs, orgs without the
  incremental filter) run every ``sweep_interval``; their pages draw from a
  bounded share of the budget enforced where pages are fetched, and the
  planner starts at most ``max_sweeps`` at once.

This module imports nothing but the standard library: the task in tasks.py
gathers the facts from Redis and enqueues what :func:`plan` returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["incremental", "sweep"]

# Activity (recent changes, decayed) is halved every this many seconds.
ACTIVITY_HALF_LIFE = 600.0


@dataclass(frozen=True)
class OrgView:
    """What the planner knows of one org (gathered from Redis by the plan task)."""

    org_id: str
    last_planned: float | None = None  # start of the last planned incremental poll
    last_sweep: float | None = None  # end of the last complete sweep
    busy: bool = False  # queued or running (its lease is held)
    sweeping: bool = False  # busy with a sweep
    retry_at: float = 0.0  # backoff after a failed poll
    activity: float = 0.0  # changes seen recently, decayed (see decay())
    baselined: bool = False
    needs_sweep: bool = False  # resync asked, or the API rejects the incremental filter
    poll_pages: float = 1.0  # expected pages of an incremental poll


@dataclass(frozen=True)
class Budget:
    limit: int  # requests per 60 s, fleet-wide
    used: int  # requests granted in the last 60 s
    inflight: int = 0  # expected requests of polls queued or running
    paused_for: float = 0.0  # seconds left of a 429 pause


@dataclass(frozen=True)
class PlanConfig:
    poll_interval: float = 30.0
    sweep_interval: float = 3600.0
    sweep_share: float = 0.2
    # A quiet org waits at most this many budget cycles: enough slack to poll
    # busy orgs more often, small enough that the worst case stays near the bound.
    max_backoff: float = 1.25
    max_weight: float = 4.0
    tick: float = 2.0
    max_sweeps: int = 2


@dataclass(frozen=True)
class Decision:
    org_id: str
    mode: Mode
    reason: str


def decay(activity: float, elapsed: float) -> float:
    """Exponential decay of an org's activity over ``elapsed`` seconds."""
    if elapsed <= 0:
        return activity
    return activity * math.pow(0.5, elapsed / ACTIVITY_HALF_LIFE)


def cycle_interval(n_orgs: int, limit: int, config: PlanConfig) -> float:
    """Seconds for one request per org: ``60·O/B``, the bound the budget itself sets.

    No schedule can poll every org more often than this on average; plain
    round-robin polls each org exactly this often (or every ``poll_interval``
    when the budget allows more).
    """
    if n_orgs <= 0:
        return config.poll_interval
    return max(config.poll_interval, 60.0 * n_orgs / max(1e-9, limit))


def latency_bound(n_orgs: int, limit: int, config: PlanConfig) -> float:
    """The longest an org waits between polls (while sweeps fit their share): status shows it."""
    rr = cycle_interval(n_orgs, limit, config)
    if rr <= config.poll_interval:
        return config.poll_interval + config.tick
    return config.max_backoff * rr + config.tick


def sweep_affordable(n_orgs: int, sweep_pages: float, limit: int, config: PlanConfig) -> bool:
    """Whether the sweep share of the budget covers every org's sweep each interval."""
    needed_per_minute = n_orgs * max(1.0, sweep_pages) * 60.0 / config.sweep_interval
    return needed_per_minute <= limit * config.sweep_share


def plan(now: float, orgs: Sequence[OrgView], budget: Budget, config: PlanConfig) -> list[Decision]:
    """The polls to enqueue now, in order."""
    if budget.paused_for > 0 or not orgs:
        return []
    available = budget.limit - budget.used - budget.inflight
    # Pace to the budget's rate, so a window's budget is spread over it instead
    # of queued at its start (bursts would make polls due all at once, and the
    # starving rule would then turn the plan into plain round-robin).
    per_tick = math.ceil(budget.limit * config.tick / 60.0)
    allowance: float = min(available, per_tick)
    decisions: list[Decision] = []

    # Sweeps: baselines first, then resyncs and filterless orgs, then the periodic ones.
    sweeping = sum(1 for o in orgs if o.sweeping)
    sweep_due: list[tuple[int, float, OrgView]] = []
    for org in orgs:
        if org.busy or org.retry_at > now:
            continue
        if not org.baselined:
            sweep_due.append((0, 0.0, org))
        elif org.needs_sweep:
            last = org.last_planned or 0.0
            if now - last >= config.poll_interval:
                sweep_due.append((1, last, org))
        elif org.last_sweep is None or now - org.last_sweep >= config.sweep_interval:
            sweep_due.append((2, org.last_sweep or 0.0, org))
    sweep_due.sort(key=lambda item: (item[0], item[1]))
    planned: set[str] = set()
    for _rank, _key, org in sweep_due:
        if sweeping >= config.max_sweeps or allowance < 1:
            break
        decisions.append(Decision(org.org_id, "sweep", "baseline" if _rank == 0 else "sweep"))
        planned.add(org.org_id)
        sweeping += 1
        allowance -= 1

    # Incremental polls.
    rr = cycle_interval(len(orgs), budget.limit, config)
    short = rr > config.poll_interval
    starving_after = config.max_backoff * rr
    candidates: list[tuple[int, float, OrgView]] = []
    for org in orgs:
        if org.org_id in planned or org.busy or org.retry_at > now:
            continue
        if not org.baselined or org.needs_sweep:
            continue
        waited = now - org.last_planned if org.last_planned is not None else math.inf
        if waited < config.poll_interval:
            continue
        if not short:
            candidates.append((1, waited, org))
            continue
        if waited >= starving_after:
            candidates.append((0, waited, org))
            continue
        weight = 1.0 + min(org.activity, config.max_weight - 1.0)
        candidates.append((1, waited * weight, org))
    candidates.sort(key=lambda item: (item[0], -item[1]))
    for rank, _score, org in candidates:
        cost = max(1.0, org.poll_pages)
        if allowance < cost:
            break
        decisions.append(Decision(org.org_id, "incremental", "starving" if rank == 0 else "due"))
        allowance -= cost
    return decisions
