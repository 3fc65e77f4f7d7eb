"""One planner tick: gather the facts, allocate the budget, choose what to send now.

The I/O half of planning (scheduler.py and allocation.py are the pure half):
it reads the orgs (configured or discovered), every (org, resource) unit's
facts and the budget from Redis, recomputes the allocation, records what it
gives each unit for ``status``, and returns the dispatch decisions; the plan
task in tasks.py only enqueues them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from etbridge import keys, planstore, scheduler, state
from etbridge.allocation import Allocation
from etbridge.fairshare import fair_shares
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


# Per application (its keyspace): two applications may poll the same org ids.
_cache: dict[keys.Keyspace, tuple[float, tuple[object, ...], Allocation]] = {}


def _allocation(
    units: list[scheduler.UnitView],
    limit: int,
    config: scheduler.PlanConfig,
    now: float,
    ks: keys.Keyspace = keys.DEFAULT,
) -> Allocation:
    """The allocation, recomputed every ALLOCATION_TTL seconds or when the units change.

    The estimates move with a half-life of minutes, so a few seconds' old
    allocation costs nothing, and a tick with 10,000 units stays cheap.
    """
    signature = (limit, config, tuple(u.key for u in units))
    cached = _cache.get(ks)
    if cached is not None and cached[1] == signature and now - cached[0] < ALLOCATION_TTL:
        return cached[2]
    alloc = scheduler.plan_rates(units, limit, config)
    _cache[ks] = (now, signature, alloc)
    return alloc


@dataclass
class _Prepared:
    """One application's tick up to its dispatch (see tick and tick_apps)."""

    rt: Runtime
    now: float
    units: list[scheduler.UnitView]
    alloc: Allocation
    config: scheduler.PlanConfig
    budget: scheduler.Budget  # slots None: bound by the caller
    workers: scheduler.Workers
    warnings: list[str]

    def dispatch(self, slots: int | None) -> list[scheduler.Decision]:
        budget = dataclasses.replace(self.budget, slots=slots)
        return scheduler.dispatch(self.now, self.units, self.alloc, budget, self.config)

    def commit(self, decisions: list[scheduler.Decision]) -> Tick:
        rt = self.rt
        planstore.mark_queued(
            rt.redis,
            rt.keyspace,
            decisions,
            self.now,
            scheduler.next_send(decisions, self.units, rt.settings.rate_limit),
        )
        return Tick(decisions=decisions, warnings=self.warnings)


def tick(rt: Runtime, tick_seconds: float) -> Tick:
    """Plan one tick (one caller per tick fleet-wide; a second beat's tick plans nothing)."""
    prepared = _prepare(rt, tick_seconds)
    if isinstance(prepared, Tick):
        return prepared
    return prepared.commit(
        prepared.dispatch(scheduler.worker_slots(prepared.workers, prepared.config))
    )


def tick_apps(runtimes: Sequence[Runtime], tick_seconds: float) -> dict[str | None, Tick]:
    """Plan one tick of every application, sharing the workers' slots fairly.

    Each application plans as :func:`tick` does, with its own lock, budget and
    allocation; the workers' bound is the fleet's (the start rates and waiting
    polls of all applications), shared max-min fair by what each has due
    (fairshare.py). One application's failure is logged and skips only it.
    """
    prepared: list[_Prepared] = []
    out: dict[str | None, Tick] = {}
    for rt in runtimes:
        try:
            one = _prepare(rt, tick_seconds)
        except Exception as exc:
            log.warning("plan of application %s failed: %s", rt.app, exc)
            out[rt.app] = Tick(skipped=f"failed: {type(exc).__name__}")
            continue
        if isinstance(one, Tick):
            out[rt.app] = one
        else:
            prepared.append(one)
    if not prepared:
        return out
    fleet = scheduler.Workers(
        started=sum(p.workers.started or 0.0 for p in prepared),
        waiting=sum(p.workers.waiting for p in prepared),
    )
    slots = scheduler.worker_slots(fleet, prepared[0].config)
    wanted = {p.rt.app or "": p.dispatch(None) for p in prepared}
    shares = fair_shares(
        slots, {app: len(d) for app, d in wanted.items()}, int(time.time() / tick_seconds)
    )
    for p in prepared:
        name = p.rt.app or ""
        decisions = wanted[name]
        if shares[name] < len(decisions):
            decisions = p.dispatch(shares[name])
        try:
            out[p.rt.app] = p.commit(decisions)
        except Exception as exc:
            log.warning("plan of application %s failed: %s", p.rt.app, exc)
            out[p.rt.app] = Tick(skipped=f"failed: {type(exc).__name__}")
    return out


def _prepare(rt: Runtime, tick_seconds: float) -> _Prepared | Tick:
    """A tick up to its dispatch; a :class:`Tick` when another beat planned this one."""
    if not planstore.take_tick(rt.redis, rt.keyspace, tick_seconds):
        return Tick(skipped="another beat planned this tick")
    settings = rt.settings
    now = time.time()
    units = planstore.gather(rt.redis, rt.keyspace, org_ids(rt), settings.resources, now)
    planstore.note_seen(rt.redis, rt.keyspace, units, now)
    config = scheduler.PlanConfig.from_settings(settings, tick_seconds)
    alloc = _allocation(units, settings.rate_limit, config, now, rt.keyspace)
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
    return _Prepared(
        rt,
        now,
        units,
        alloc,
        config,
        scheduler.Budget(
            limit=settings.rate_limit,
            used=int(budget.get("used", 0)),
            inflight=sum(u.poll_pages for u in units if u.queued),
            freeing=int(budget.get("freeing", 0)),
            paused_for=float(budget.get("paused_for") or 0.0),
            next_send=cursor,
        ),
        workers,
        found,
    )


def sweep_pages(decision: scheduler.Decision, settings: Settings) -> int:
    """Pages one sweep task may list: one for a periodic sweep, about a second's worth otherwise."""
    if decision.reason in (scheduler.Reason.BASELINE, scheduler.Reason.RESYNC):
        return max(1, int(settings.rate_limit / scheduler.BUDGET_WINDOW))
    return 1
