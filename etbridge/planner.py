"""One planner tick: gather the facts, allocate the budget, choose what to send now.

The I/O half of planning (scheduler.py and allocation.py are the pure half):
it reads the orgs (configured or discovered), every (org, resource) unit's
facts and the budget from Redis, recomputes the allocation, records what it
gives each unit for ``status``, and returns the dispatch decisions; the plan
task in tasks.py only enqueues them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from etbridge import planstore, scheduler, state
from etbridge.allocation import Allocation
from etbridge.runtime import Runtime
from etbridge.settings import Settings

log = logging.getLogger("etbridge.planner")

# Seconds between two records of the allocation's summary (it moves slowly).
RECORD_EVERY = 5.0
# Seconds an allocation is reused by the ticks that follow (in one process).
ALLOCATION_TTL = 10.0


@dataclass
class Tick:
    decisions: list[scheduler.Decision] = field(default_factory=list)
    skipped: str = ""
    warnings: list[str] = field(default_factory=list)


def org_ids(rt: Runtime) -> list[str]:
    """The orgs to poll: the configured ones, or those discovered and not gone."""
    settings = rt.settings
    if settings.orgs:
        # Only the ids: reading and parsing every org's facts each tick cost
        # ~30 ms a tick at 600 orgs, on a worker.
        registered = state.registered_org_ids(rt.redis, rt.keyspace)
        for org_id in settings.orgs:
            if org_id not in registered:
                state.register_org(rt.redis, rt.keyspace, org_id)
        return list(settings.orgs)
    if planstore.discovery_due(rt.redis, rt.keyspace, settings.discovery_interval):
        discover(rt)
    return [
        org
        for org, facts in state.known_orgs(rt.redis, rt.keyspace).items()
        if "removed_at" not in facts
    ]


def discover(rt: Runtime) -> list[str]:
    """Read the organizations endpoint; register new orgs, mark vanished ones."""
    try:
        found = rt.api.organizations()
    except Exception as exc:
        rt.redis.delete(rt.keyspace.discovery)  # try again on a later tick
        log.warning("org discovery failed: %s", exc)
        return []
    ids = [o.org_id for o in found]
    for org in found:
        state.register_org(rt.redis, rt.keyspace, org.org_id, name=org.name)
    for org_id, facts in state.known_orgs(rt.redis, rt.keyspace).items():
        if org_id not in ids and "removed_at" not in facts:
            state.mark_removed(rt.redis, rt.keyspace, org_id)
    log.info("orgs discovered count=%d", len(ids))
    return ids


def warnings(alloc: Allocation, settings: Settings) -> list[str]:
    """What the budget cannot give that the settings ask for, with what it can."""
    out: list[str] = []
    rates = list(alloc.rates.values())
    if not rates:
        return out
    if not alloc.sweep_floor_met:
        worst = max(r.sweep_every for r in rates)
        out.append(
            f"ETBRIDGE_SWEEP_INTERVAL={settings.sweep_interval:g} cannot be met at "
            f"ETBRIDGE_RATE_LIMIT={settings.rate_limit}: deletions are looked for every "
            f"{_seconds(worst)} at the most"
        )
    if not alloc.poll_interval_met:
        worst = max(r.poll_every for r in rates if r.poll > 0) if any(r.poll for r in rates) else 0
        out.append(
            f"ETBRIDGE_POLL_INTERVAL={settings.poll_interval:g} cannot be met at "
            f"ETBRIDGE_RATE_LIMIT={settings.rate_limit}: orgs are polled every "
            f"{_seconds(worst)} at the most"
        )
    return out


def _setting(warning: str) -> str:
    """What a warning is about: the setting it names (``ETBRIDGE_SWEEP_INTERVAL=10``)."""
    return warning.split(" ", 1)[0]


def _seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f} s"


_cache: tuple[float, tuple[object, ...], Allocation] | None = None


def _allocation(
    units: list[scheduler.UnitView], limit: int, config: scheduler.PlanConfig, now: float
) -> Allocation:
    """The allocation, recomputed every ALLOCATION_TTL seconds or when the units change.

    The estimates move with a half-life of minutes, so a few seconds' old
    allocation costs nothing, and a tick with 10,000 units stays cheap.
    """
    global _cache  # noqa: PLW0603 - one allocation cache per process, on purpose
    signature = (limit, config, tuple(u.key for u in units))
    if _cache is not None and _cache[1] == signature and now - _cache[0] < ALLOCATION_TTL:
        return _cache[2]
    alloc = scheduler.plan_rates(units, limit, config)
    _cache = (now, signature, alloc)
    return alloc


def tick(rt: Runtime, tick_seconds: float) -> Tick:
    """Plan one tick (one caller per tick fleet-wide; a second beat's tick plans nothing)."""
    if not planstore.take_tick(rt.redis, rt.keyspace, tick_seconds):
        return Tick(skipped="another beat planned this tick")
    settings = rt.settings
    now = time.time()
    units = planstore.gather(rt.redis, rt.keyspace, org_ids(rt), settings.resources, now)
    planstore.note_seen(rt.redis, rt.keyspace, units, now)
    config = scheduler.PlanConfig.from_settings(settings, tick_seconds)
    alloc = _allocation(units, settings.rate_limit, config, now)
    found = warnings(alloc, settings)
    previous = planstore.summary(rt.redis, rt.keyspace)
    # Logged once a setting: the interval the budget gives moves with the
    # estimates, and status shows its current figure.
    said = set(map(_setting, previous.get("warnings") or []))
    for line in found:
        if _setting(line) not in said:
            log.warning("WARNING: %s", line)
    if found != previous.get("warnings") or now - float(previous.get("at", 0)) >= RECORD_EVERY:
        planstore.record_summary(
            rt.redis,
            rt.keyspace,
            {
                "at": now,
                "cycle": round(alloc.cycle, 3),
                "requests_per_min": round(alloc.cost * 60, 2),
                "units": len(units),
                "warnings": found,
            },
        )
    budget = rt.budget.status(ahead=config.lookahead)
    cursor = planstore.send_cursor(rt.redis, rt.keyspace)
    workers = scheduler.Workers(
        started=planstore.started_rate(rt.redis, rt.keyspace, now),
        waiting=sum(1 for u in units if u.queued),
    )
    decisions = scheduler.dispatch(
        now,
        units,
        alloc,
        scheduler.Budget(
            limit=settings.rate_limit,
            used=int(budget.get("used", 0)),
            inflight=sum(u.poll_pages for u in units if u.queued),
            freeing=int(budget.get("freeing", 0)),
            paused_for=float(budget.get("paused_for") or 0.0),
            next_send=cursor,
            slots=scheduler.worker_slots(workers, config),
        ),
        config,
    )
    planstore.mark_queued(
        rt.redis,
        rt.keyspace,
        decisions,
        now,
        scheduler.next_send(decisions, units, settings.rate_limit),
    )
    return Tick(decisions=decisions, warnings=found)


def sweep_pages(decision: scheduler.Decision, settings: Settings) -> int:
    """Pages one sweep task may list: one for a periodic sweep, about a second's worth otherwise."""
    if decision.reason in (scheduler.Reason.BASELINE, scheduler.Reason.RESYNC):
        return max(1, int(settings.rate_limit / scheduler.BUDGET_WINDOW))
    return 1
