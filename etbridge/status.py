"""``etbridge status``: what the fleet is doing, read from Redis only.

It never asks for a token and never calls the API, so it runs from any host
with access to Redis, even while the credentials are wrong. With
``ETBRIDGE_APPS_FILE`` the document has one section per application
(:func:`document`); without it, it is :func:`collect`'s, as ever.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis

from etbridge import holds, keys, planstore, scheduler, state
from etbridge.allocation import Rates
from etbridge.planner import warnings as planner_warnings
from etbridge.settings import Settings
from etbridge.timefmt import from_epoch


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _iso_times(sink: dict[str, Any]) -> dict[str, Any]:
    """A sink's epoch-second ``*_at`` fields as ISO 8601, like every other time here."""
    return {
        k: from_epoch(v) if k.endswith("_at") and isinstance(v, (int, float)) else v
        for k, v in sink.items()
    }


def collect(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """The status document of the contract (``etbridge status --json``)."""
    from etbridge import outbox
    from etbridge.auth import TokenCache
    from etbridge.ratelimit import RequestBudget

    now = time.time()
    registry = state.known_orgs(client, settings.keyspace)
    org_ids = list(settings.orgs) or list(registry)
    active = [o for o in org_ids if "removed_at" not in registry.get(o, {})]
    # The planner's own allocation, recomputed from the same facts (pure, no token).
    units = planstore.gather(client, settings.keyspace, active, settings.resources, now)
    config = scheduler.PlanConfig.from_settings(settings, tick=1.0)
    alloc = scheduler.plan_rates(units, settings.rate_limit, config)
    estimates = {u.key: u for u in units}
    plans = planstore.plans(client, settings.keyspace, org_ids, settings.resources)
    metas = {
        res: state.iter_meta(client, settings.keyspace, org_ids, res) for res in settings.resources
    }
    records = _record_counts(client, settings.keyspace, org_ids, settings.resources)
    held = {
        res: holds.read_many(client, settings.keyspace, org_ids, res) for res in settings.resources
    }
    orgs: dict[str, Any] = {}
    for org_id in org_ids:
        removed = "removed_at" in registry.get(org_id, {})
        per_resource = {
            res: _unit_status(metas[res][org_id], plans[(org_id, res)], records[(org_id, res)], now)
            | _allocated(alloc.rates.get((org_id, res)), estimates.get((org_id, res)))
            | _held(held[res][org_id])
            for res in settings.resources
        }
        first = dict(per_resource[settings.resources[0]])
        first["removed"] = removed
        first["deletions_held"] = sum(u["deletions_held"] for u in per_resource.values())
        first["accessible"] = not removed and all(u["accessible"] for u in per_resource.values())
        first["resources"] = per_resource
        orgs[org_id] = first
    tokens = TokenCache(client, settings)
    budget = RequestBudget.for_settings(settings, client)
    delivery = outbox.status(client, settings)
    bounds = [r.poll_every for r in alloc.rates.values() if r.poll > 0]
    planner = {
        "latency_bound": _round(max(bounds, default=None)),
        "cycle": round(alloc.cycle, 1),
        "requests_per_min": round(alloc.cost * 60, 1),
        "orgs": len(active),
        "units": len(units),
    }
    warnings = planner_warnings(alloc, settings)
    warnings = list(delivery.get("warnings", [])) + warnings
    return {
        "generated_at": from_epoch(now),
        "orgs": orgs,
        "token": tokens.status(),
        "rate_budget": budget.status(),
        "outbox": delivery.get("outbox", {}),
        "sinks": {url: _iso_times(sink) for url, sink in delivery.get("sinks", {}).items()},
        "planner": planner,
        "warnings": warnings,
    }


def document(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """``etbridge status --json``: :func:`collect`, or ``{generated_at, apps: {name: …}}``
    with the apps file, each application's section :func:`collect` of its settings."""
    if not settings.apps_file:
        return collect(client, settings)
    apps = {app.name: collect(client, app.settings(settings)) for app in settings.apps()}
    for section in apps.values():
        section.pop("generated_at", None)
    return {"generated_at": from_epoch(time.time()), "apps": apps}


def render_document(doc: dict[str, Any]) -> str:
    """:func:`render`, or one titled section per application (apps file)."""
    if "apps" not in doc:
        return render(doc)
    sections = [f"== application {name} ==\n{render(app)}" for name, app in doc["apps"].items()]
    return "\n\n".join(sections)


def _round(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return None
    return round(value, 1)


def _record_counts(
    client: redis.Redis, ks: keys.Keyspace, org_ids: list[str], resources: list[str]
) -> dict[tuple[str, str], int]:
    """Records stored per (org, resource), in one round trip."""
    units = [(o, r) for o in org_ids for r in resources]
    pipe = client.pipeline(transaction=False)
    for org_id, res in units:
        pipe.hlen(ks.snapshots(org_id, res))
    return {unit: int(n) for unit, n in zip(units, pipe.execute(), strict=True)}


def _unit_status(
    meta: dict[str, str], plan: dict[str, str], records: int, now: float
) -> dict[str, Any]:
    last_poll = _num(meta.get("last_poll_at"))
    return {
        "last_poll": from_epoch(last_poll),
        "last_poll_mode": meta.get("last_poll_mode"),
        "last_full_sweep": from_epoch(meta.get("last_sweep_at")),
        "watermark": meta.get("watermark"),
        "lag": round(now - last_poll, 1) if last_poll else None,
        "errors": int(meta.get("errors", "0") or 0),
        "last_error": meta.get("last_error") or None,
        "next_retry": from_epoch(plan.get("retry_at")),
        "baselined": meta.get("baselined") == "1",
        "sweep_in_progress": meta.get("sweep_active") == "1",
        "incremental_filter": "unsupported" if meta.get("filter_unsupported") == "1" else "ok",
        "records": records,
        "deletions_pending": int(meta.get("deletions_pending") or 0),
        "inaccessible_since": from_epoch(meta.get("inaccessible_since")),
        # Lost access (403/404 on its X-API-ORG); an org gone from discovery is not polled.
        "accessible": not meta.get("inaccessible_since"),
    }


def _held(hold: holds.Hold | None) -> dict[str, Any]:
    return {"deletions_held": hold.count if hold is not None else 0}


def _allocated(rates: Rates | None, unit: scheduler.UnitView | None) -> dict[str, Any]:
    """What the budget gives the unit: its poll and deletion-detection intervals."""
    poll = rates.poll_every if rates else None
    sweep = rates.sweep_every if rates else None
    change_rate = unit.changes.rate(scheduler.CHANGE_PRIOR) if unit else 0.0
    return {
        "change_rate_per_min": round(change_rate * 60, 3),
        "poll_interval": _round(poll),
        "deletion_interval": _round(sweep),
        # The longest a change waits before a poll sees it (the poll interval, plus a tick).
        "latency_bound": _round(poll + 1.0 if poll is not None else None),
    }


def _short(iso: str | None) -> str:
    """``2026-11-27T20:04:03.120Z`` -> ``2026-11-27 20:04:03`` (tables only)."""
    return iso[:19].replace("T", " ") if iso else "-"


def _every(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _org_line(org_id: str, org: dict[str, Any], tag: str | None = None) -> str:
    """One row of the org table: an org (its first resource) or another resource of it."""
    lag = org["lag"]
    notes = [tag] if tag else []
    if org.get("removed"):
        notes.append("gone from the organizations endpoint")
    elif org.get("accessible") is False:
        notes.append(f"INACCESSIBLE since {_short(org.get('inaccessible_since'))}")
    if org.get("deletions_held"):
        notes.append(f"deletions held: {org['deletions_held']} (etbridge deletions list)")
    if org.get("last_error"):
        notes.append(_clip(str(org["last_error"])))
    if org.get("next_retry"):
        notes.append(f"next try {_short(org['next_retry'])}")
    if org.get("incremental_filter") == "unsupported":
        notes.append("sweeps only: incremental filter rejected")
    return (
        f"{org_id:<10} {_short(org['last_poll']):<19} "
        f"{(f'{lag:.0f}s' if lag is not None else '-'):>6} "
        f"{_short(org['last_full_sweep']):<19} {org['records']:>7} "
        f"{org['change_rate_per_min']:>7} {_every(org['poll_interval']):>6} "
        f"{_every(org['deletion_interval']):>6} "
        f"{org['errors']:>6}" + (f"  {'; '.join(notes)}" if notes else "")
    )


def _token_line(tok: dict[str, Any]) -> str:
    if tok.get("error"):
        line = f"token    ERROR {tok['error']}"
        if tok.get("error_description"):
            line += f": {_clip(tok['error_description'], 80)}"
        if tok.get("next_attempt_at"):
            line += f"  (next token request {_short(tok['next_attempt_at'])} UTC)"
        return line
    if tok.get("expires_at"):
        return (
            f"token    ok, expires {_short(tok['expires_at'])} UTC"
            f"  (fetched {_short(tok.get('fetched_at'))} UTC)"
        )
    return "token    none cached (fetched on the fleet's first API call)"


def _sink_line(url: str, sink: dict[str, Any]) -> str:
    line = (
        f"sink {url} [{sink.get('kind')} {sink.get('name')}]: "
        f"delivered {sink.get('delivered', 0)}  pending {sink.get('pending', 0)}  "
        f"retrying {sink.get('retrying', 0)}  dead-lettered {sink.get('dead_lettered', 0)}"
    )
    if sink.get("disabled"):
        line += f"  DISABLED ({sink.get('disabled_reason') or 'see etbridge dlq'})"
    elif sink.get("failing_since"):
        line += f"  failing since {_short(sink.get('failing_since'))} UTC"
    if sink.get("last_error"):
        line += f"  last error {_short(sink.get('last_error_at'))}: "
        line += _clip(str(sink["last_error"]), 80)
    return line


def render(doc: dict[str, Any]) -> str:
    """A readable table of :func:`collect`'s document."""
    lines = [_token_line(doc["token"])]
    bud = doc["rate_budget"]
    lines.append(
        f"budget   {bud.get('used')}/{bud.get('limit')} requests in the last 60 s"
        + (f"  PAUSED until {_short(bud['paused_until'])} UTC" if bud.get("paused_until") else "")
    )
    plan = doc.get("planner", {})
    if plan.get("units"):
        lines.append(
            f"planner  {plan['units']} units, {plan.get('requests_per_min')} requests/min "
            f"planned, round-robin cycle {plan.get('cycle')} s"
        )
    ob = doc.get("outbox", {})
    lines.append(
        f"outbox   pending {ob.get('pending', 0)}  retrying {ob.get('retrying', 0)}"
        f"  dead-lettered {ob.get('dead_lettered', 0)}"
    )
    lines.append("")
    lines.append(
        f"{'org':<10} {'last poll (UTC)':<19} {'lag':>6} {'last sweep (UTC)':<19} "
        f"{'records':>7} {'chg/min':>7} {'poll':>6} {'sweep':>6} {'errors':>6}"
    )
    for org_id, org in doc["orgs"].items():
        resources = list(org.get("resources", {}).items())
        several = len(resources) > 1
        lines.append(_org_line(org_id, org, f"[{resources[0][0]}]" if several else None))
        if several:
            # The first resource is the org's own line; the others get one each.
            lines.extend(_org_line(f"  {name}", unit) for name, unit in resources[1:])
    if not doc["orgs"]:
        lines.append("(no org yet: set ETBRIDGE_ORGS, or wait for the planner's discovery)")
    if doc.get("sinks"):
        lines.append("")
        lines.extend(_sink_line(url, sink) for url, sink in doc["sinks"].items())
    for warning in doc.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)
