"""Thin Celery tasks: they take ids, load what they need, and call into the modules.

- ``etbridge.plan``      beat's tick: discover orgs, decide polls, enqueue due deliveries;
- ``etbridge.poll_org``  one poll of one org (queue ``poll``);
- ``etbridge.deliver``   relay one org's outbox to one sink (queue ``deliver``).

Failures are not retried by Celery: a failed poll backs its org off in Redis
and the planner plans it again when the backoff has passed, so a poll is
never queued twice and a retry never holds a worker slot.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task

from etbridge import logs, metrics, outbox, planstore, runtime, scheduler, state
from etbridge.errors import AuthenticationError, LeaseLost, RetriableError
from etbridge.worker import PLAN_TICK, app, settings

log = logging.getLogger("etbridge.tasks")

# A poll message that waited longer than this in the queue is dropped: the
# planner has planned the org again by then.
POLL_EXPIRES = 120.0


def plan_config() -> scheduler.PlanConfig:
    return scheduler.PlanConfig(
        poll_interval=settings.poll_interval,
        sweep_interval=settings.sweep_interval,
        tick=PLAN_TICK,
    )


def org_ids(rt: runtime.Runtime) -> list[str]:
    """The orgs to poll: the configured ones, or those discovered and not gone."""
    if settings.orgs:
        return list(settings.orgs)
    if planstore.discovery_due(rt.redis, settings.discovery_interval):
        discover(rt)
    return [org for org, facts in state.known_orgs(rt.redis).items() if "removed_at" not in facts]


def discover(rt: runtime.Runtime) -> list[str]:
    """Read the organizations endpoint; register new orgs, mark vanished ones."""
    try:
        found = rt.api.organizations()
    except Exception as exc:
        rt.redis.delete(planstore.DISCOVERY)  # try again on a later tick
        log.warning("org discovery failed: %s", exc)
        return []
    ids = [o.org_id for o in found]
    for org in found:
        state.register_org(rt.redis, org.org_id, name=org.name)
    for org_id, facts in state.known_orgs(rt.redis).items():
        if org_id not in ids and "removed_at" not in facts:
            state.mark_removed(rt.redis, org_id)
    log.info("orgs discovered count=%d", len(ids))
    return ids


@app.task(name="etbridge.plan")
def plan() -> dict[str, Any]:
    rt = runtime.get(settings)
    if not planstore.take_tick(rt.redis, PLAN_TICK):
        return {"skipped": "another beat planned this tick"}
    now = time.time()
    ids = org_ids(rt)
    if settings.orgs:
        registered = state.known_orgs(rt.redis)
        for org_id in ids:
            if org_id not in registered:
                state.register_org(rt.redis, org_id)
    views = planstore.gather(rt.redis, ids, settings.resources[0], now)
    budget = rt.budget.status()
    decisions = scheduler.plan(
        now,
        views,
        scheduler.Budget(
            limit=settings.rate_limit,
            used=int(budget.get("used", 0)),
            inflight=int(sum(v.poll_pages for v in views if v.busy)),
            paused_for=float(budget.get("paused_for") or 0.0),
        ),
        plan_config(),
    )
    planstore.mark_queued(rt.redis, decisions, now)
    for d in decisions:
        poll_org.apply_async((d.org_id, d.mode), expires=POLL_EXPIRES)
    # Deliveries whose retry time has come, and partitions a lost task left behind.
    partitions = rt.relay.due(now)
    for org_id, sink_name in partitions:
        deliver.apply_async((org_id, sink_name))
    return {"polls": len(decisions), "deliveries": len(partitions)}


def _deliver_soon(rt: runtime.Runtime, org_id: str) -> None:
    """Right after a commit with events: enqueue the org's deliveries (no tick's wait)."""
    for part_org, sink_name in rt.relay.notify(org_id):
        deliver.apply_async((part_org, sink_name))


@app.task(name="etbridge.poll_org", bind=True)
def poll_org(self: Task, org_id: str, mode: str = "incremental") -> list[dict[str, Any]]:
    rt = runtime.get(settings)
    with logs.bind(org_id=org_id, task_id=self.request.id or ""):
        poller = rt.poller(
            on_started=lambda: planstore.mark_started(rt.redis, org_id),
            on_events=lambda org: _deliver_soon(rt, org),
        )
        try:
            results = poller.poll(org_id, "sweep" if mode == "sweep" else "incremental")
        except LeaseLost as exc:
            metrics.record_poll_failure(mode, "lease_lost")
            log.warning("poll stopped: %s", exc)
            return []
        except RetriableError as exc:
            metrics.record_poll_failure(mode, "retriable_error")
            delay = planstore.record_failure(rt.redis, org_id, str(exc), exc.retry_after)
            log.warning("poll failed, retrying in %.0fs: %s", delay, exc)
            return []
        except AuthenticationError as exc:
            metrics.record_poll_failure(mode, "auth_error")
            delay = planstore.record_failure(rt.redis, org_id, str(exc), 60.0)
            log.error("poll failed (authentication), retrying in %.0fs: %s", delay, exc)
            return []
        except redis.exceptions.RedisError as exc:
            # Redis itself is away (a restart, a failover): nothing can be recorded;
            # the planner plans the org again once Redis answers and the lease is gone.
            metrics.record_poll_failure(mode, "redis")
            log.warning("poll stopped: Redis unavailable: %s", exc)
            return []
        except Exception as exc:
            metrics.record_poll_failure(mode, "error")
            planstore.record_failure(rt.redis, org_id, f"{type(exc).__name__}: {exc}")
            raise
        metrics.record_polls(results)
        if all(r.skipped for r in results):
            return [r.as_dict() for r in results]
        planstore.record_success(
            rt.redis,
            org_id,
            events=sum(r.events for r in results),
            pages=sum(r.pages for r in results),
            mode=results[0].mode,
        )
        return [r.as_dict() for r in results]


@app.task(name="etbridge.deliver", bind=True)
def deliver(self: Task, org_id: str, sink_name: str) -> dict[str, Any]:
    rt = runtime.get(settings)
    with logs.bind(org_id=org_id, task_id=self.request.id or ""):
        try:
            result = rt.relay.deliver(org_id, sink_name)
        except KeyError:
            # A sink removed from ETBRIDGE_SINKS since the task was queued.
            log.warning("deliver skipped: sink %s is not configured", sink_name)
            return {"outcome": "unknown_sink"}
        metrics.record_delivery(result, settings)
        if result.outcome == outbox.BUDGET:
            # A backlog: go on at once rather than wait for the next tick.
            deliver.apply_async((org_id, sink_name))
        return {
            "outcome": result.outcome,
            "delivered": result.delivered,
            "dead_lettered": result.dead_lettered,
        }


@app.task(name="etbridge.trim")
def trim() -> dict[str, Any]:
    """Drop outbox entries older than the retention that every sink acknowledged; expire DLQs."""
    rt = runtime.get(settings)
    removed = outbox.trim(rt.redis, settings)
    expired = outbox.expire_dead_letters(rt.redis, settings)
    log.info("outbox trimmed removed=%d dead_letters_expired=%d", removed, expired)
    return {"removed": removed, "dead_letters_expired": expired}
