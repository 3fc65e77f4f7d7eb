"""Thin Celery tasks: they take ids, load what they need, and call into the modules.

- ``etbridge.plan``      beat's tick (planner.py): enqueue its polls at their send times,
  and the deliveries that are due;
- ``etbridge.poll_org``  one poll, or some pages of a sweep, of one (org, resource)
  (queue ``poll``);
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

from etbridge import (
    logs,
    metrics,
    outbox,
    planner,
    planstore,
    runtime,
    scheduler,
    sender,
    shutdown,
)
from etbridge.errors import AccessLost, AuthenticationError, LeaseLost, RetriableError
from etbridge.pollhooks import Hooks
from etbridge.worker import PLAN_TICK, app, settings

log = logging.getLogger("etbridge.tasks")

# A poll message that waited longer than this in the queue is dropped: the
# planner has planned the org again by then.
POLL_EXPIRES = 120.0
# Polls due this soon are sent by the plan task itself; later ones at their time.
SEND_NOW = 0.05


@app.task(name="etbridge.plan")
def plan() -> dict[str, Any]:
    if not settings.apps_file:
        rt = runtime.get(settings)
        result = planner.tick(rt, PLAN_TICK)
        if result.skipped:
            return {"skipped": result.skipped}
        return _send(rt, result)
    # Every application of the file: its own lock, budget and sends; the
    # workers' slots shared fairly; one application's failure skips only it.
    _refresh()
    runtimes = {rt.app: rt for rt in runtime.every(settings)}
    out: dict[str, Any] = {}
    for name, result in planner.tick_apps(list(runtimes.values()), PLAN_TICK).items():
        rt = runtimes[name]
        if result.skipped:
            out[str(name)] = {"skipped": result.skipped}
            continue
        try:
            out[str(name)] = _send(rt, result)
        except Exception as exc:
            log.warning("plan of application %s failed: %s", name, exc)
            out[str(name)] = {"skipped": f"failed: {type(exc).__name__}"}
    for name in runtime.retired(settings):
        try:
            out[name] = _drain(runtime.get(settings, name, retired=True))
        except Exception as exc:
            log.warning("delivery of removed application %s failed: %s", name, exc)
    return out


def _drain(rt: runtime.Runtime) -> dict[str, Any]:
    """A removed application: no polls; its due deliveries go on until its outbox is drained."""
    now = time.time()
    partitions = rt.relay.due(now)
    if not partitions:
        # Pending events nobody scheduled (a delivery lost with a worker) are found at once.
        partitions = rt.relay.leftover(now)
    for org_id, sink_name in partitions:
        _deliver_later(rt, org_id, sink_name)
    if not partitions and not rt.relay.waiting():
        log.info("removed application %s: its outbox is delivered, its relay stops", rt.app)
        runtime.forget(settings, str(rt.app))
        return {"removed": True, "deliveries": 0}
    return {"removed": True, "deliveries": len(partitions)}


def _send(rt: runtime.Runtime, result: planner.Tick) -> dict[str, Any]:
    """Publish a tick's polls (or time them for beat's sender) and the due deliveries."""
    now = time.time()
    later = []
    for d in result.decisions:
        payload = {
            "org_id": d.org_id,
            "mode": d.mode,
            "resource": d.resource,
            "due": d.due,
            "max_pages": planner.sweep_pages(d, rt.settings) if d.mode == "sweep" else None,
        }
        if rt.app is not None:
            payload["app"] = rt.app
        if d.send_at - now <= SEND_NOW:
            publish_poll(payload)
        else:
            later.append((d.send_at, payload))
    # The rest wait for their send time in Redis; beat's sender publishes them.
    sender.schedule(rt.redis, rt.keyspace, later)
    # Deliveries whose retry time has come, and partitions a lost task left behind.
    partitions = rt.relay.due(now)
    for org_id, sink_name in partitions:
        _deliver_later(rt, org_id, sink_name)
    return {"polls": len(result.decisions), "deliveries": len(partitions)}


def publish_poll(payload: dict[str, Any]) -> None:
    """Send one planned poll (the plan task, or beat's sender at its send time)."""
    kwargs = {k: payload.get(k) for k in ("resource", "due", "max_pages")}
    if payload.get("app") is not None:
        kwargs["app"] = payload["app"]  # absent for the single application, as before
    # When it left for the broker: the poll's start then tells the workers' pickup
    # apart from the planner's lateness (planstore.timings).
    kwargs["published"] = time.time()
    poll_org.apply_async((payload["org_id"], payload["mode"]), kwargs, expires=POLL_EXPIRES)


def _deliver_later(rt: runtime.Runtime, org_id: str, sink_name: str) -> None:
    """Enqueue one (org, sink) delivery of the runtime's application."""
    app_kwargs = {} if rt.app is None else {"app": rt.app}
    deliver.apply_async((org_id, sink_name), app_kwargs)


def _deliver_soon(rt: runtime.Runtime, org_id: str) -> None:
    """Right after a commit with events: enqueue the org's deliveries (no tick's wait)."""
    for part_org, sink_name in rt.relay.notify(org_id):
        _deliver_later(rt, part_org, sink_name)


@app.task(name="etbridge.poll_org", bind=True)
def poll_org(  # noqa: PLR0911 - one return per outcome of a poll
    self: Task,
    org_id: str,
    mode: str = "incremental",
    resource: str | None = None,
    due: float | None = None,
    max_pages: int | None = None,
    published: float | None = None,
    app: str | None = None,
) -> list[str]:
    rt = _runtime(app, "poll")
    if rt is None:
        return []
    res = resource or settings.resources[0]
    with logs.bind(app=app or "", org_id=org_id, task_id=self.request.id or ""):
        plan: list[dict[str, str]] = []  # the unit's plan, read as the poll started

        def started() -> None:
            plan.append(planstore.mark_started(rt.redis, rt.keyspace, org_id, res, due, published))

        poller = rt.poller(
            hooks=Hooks(
                on_started=started,
                on_events=lambda org: _deliver_soon(rt, org),
                on_confirming=lambda n: planstore.reserve_sends(
                    rt.redis, rt.keyspace, n, rt.settings.rate_limit
                ),
            ),
            planned=True,
        )
        kind: scheduler.Mode = "sweep" if mode == "sweep" else "incremental"
        try:
            results = poller.poll(org_id, kind, resources=[res], max_pages=max_pages)
        except LeaseLost as exc:
            metrics.record_poll_failure(mode, "lease_lost", app)
            planstore.record_failure(
                rt.redis, rt.keyspace, org_id, res, exc, back_off=False
            )  # another has it
            log.warning("poll stopped: %s", exc)
            return []
        except RetriableError as exc:
            metrics.record_poll_failure(mode, "retriable_error", app)
            delay = planstore.record_failure(
                rt.redis, rt.keyspace, org_id, res, exc, exc.retry_after
            )
            log.warning("poll failed, retrying in %.0fs: %s", delay, exc)
            return []
        except AccessLost as exc:
            # Not deletion: state kept, nothing emitted; try again on the failure backoff.
            metrics.record_poll_failure(mode, "inaccessible", app)
            delay = planstore.record_failure(rt.redis, rt.keyspace, org_id, res, exc)
            log.warning("poll refused (org inaccessible), retrying in %.0fs: %s", delay, exc)
            return []
        except AuthenticationError as exc:
            metrics.record_poll_failure(mode, "auth_error", app)
            delay = planstore.record_failure(rt.redis, rt.keyspace, org_id, res, exc, 60.0)
            log.error("poll failed (authentication), retrying in %.0fs: %s", delay, exc)
            return []
        except redis.exceptions.RedisError as exc:
            # Redis itself is away (a restart, a failover): nothing can be recorded;
            # the planner plans the org again once Redis answers and the lease is gone.
            metrics.record_poll_failure(mode, "redis", app)
            log.warning("poll stopped: Redis unavailable: %s", exc)
            return []
        except Exception as exc:
            metrics.record_poll_failure(mode, "error", app)
            planstore.record_failure(rt.redis, rt.keyspace, org_id, res, exc)
            raise
        metrics.record_polls(results, app)
        if shutdown.requested():
            planstore.forget_planned(
                rt.redis, rt.keyspace, org_id, res
            )  # another worker goes on at once
        for r in results:
            if r.skipped:
                continue
            planstore.record_success(
                rt.redis,
                rt.keyspace,
                org_id,
                r.resource,
                mode=r.mode,
                changes=r.counts.get("created", 0) + r.counts.get("updated", 0),
                deleted=r.deleted,
                pages=r.pages,
                complete=r.complete,
                plan=plan[0] if plan and r.resource == res else None,
            )
        return [r.summary() for r in results]


@app.task(name="etbridge.deliver", bind=True)
def deliver(self: Task, org_id: str, sink_name: str, app: str | None = None) -> dict[str, Any]:
    rt = _runtime(app, "deliver", retired=True)
    if rt is None:
        return {"outcome": "unknown_app"}
    with logs.bind(app=app or "", org_id=org_id, task_id=self.request.id or ""):
        try:
            result = rt.relay.deliver(org_id, sink_name)
        except KeyError:
            # A sink removed from ETBRIDGE_SINKS since the task was queued.
            log.warning("deliver skipped: sink %s is not configured", sink_name)
            return {"outcome": "unknown_sink"}
        metrics.record_delivery(result, rt.settings)
        if result.outcome == outbox.BUDGET:
            # A backlog: go on at once rather than wait for the next tick.
            _deliver_later(rt, org_id, sink_name)
        return {
            "outcome": result.outcome,
            "delivered": result.delivered,
            "dead_lettered": result.dead_lettered,
        }


@app.task(name="etbridge.trim")
def trim() -> dict[str, Any]:
    """Drop outbox entries older than the retention that every sink acknowledged; expire DLQs."""
    removed = expired = 0
    _refresh()
    for name in runtime.served(settings):
        try:
            rt = runtime.get(settings, name)
            removed += outbox.trim(rt.redis, rt.settings)
            expired += outbox.expire_dead_letters(rt.redis, rt.settings)
        except Exception as exc:
            if name is None:
                raise  # the single application, as before
            log.warning("trim of application %s failed: %s", name, exc)  # skips only it
    log.info("outbox trimmed removed=%d dead_letters_expired=%d", removed, expired)
    return {"removed": removed, "dead_letters_expired": expired}


def _refresh() -> None:
    """Follow ``etbridge apps reload`` (with the apps file; a look at Redis each second at most)."""
    try:
        runtime.refresh(settings)
    except redis.exceptions.RedisError as exc:
        log.warning("apps reload: Redis unavailable: %s", exc)


def _runtime(app_name: str | None, what: str, *, retired: bool = False) -> runtime.Runtime | None:
    """The runtime of a task's application; None (logged) for one this process does not serve.

    ``retired``: also an application removed by a reload (its outbox is still delivered).
    """
    _refresh()
    try:
        return runtime.get(settings, app_name, retired=retired)
    except runtime.UnknownApplication as exc:
        log.warning("%s skipped: %s", what, exc)
        return None
