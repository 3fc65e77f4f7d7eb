"""``etbridge status``: what the fleet is doing, read from Redis only.

It never asks for a token and never calls the API, so it runs from any host
with access to Redis, even while the credentials are wrong.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis

from etbridge import keys, planstore, scheduler, state
from etbridge.settings import Settings


def _iso(epoch: float | str | None) -> str | None:
    if epoch in (None, "", "0"):
        return None
    try:
        value = float(epoch)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _iso_times(sink: dict[str, Any]) -> dict[str, Any]:
    """A sink's epoch-second ``*_at`` fields as ISO 8601, like every other time here."""
    return {
        k: _iso(v) if k.endswith("_at") and isinstance(v, (int, float)) else v
        for k, v in sink.items()
    }


def collect(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """The status document of the contract (``etbridge status --json``)."""
    from etbridge import outbox
    from etbridge.auth import TokenCache
    from etbridge.ratelimit import RequestBudget

    now = time.time()
    registry = state.known_orgs(client)
    org_ids = list(settings.orgs) or list(registry)
    resource = settings.resources[0]
    metas = state.iter_meta(client, org_ids, resource)
    plans = planstore.plans(client, org_ids)
    config = scheduler.PlanConfig(
        poll_interval=settings.poll_interval, sweep_interval=settings.sweep_interval
    )
    active = [o for o in org_ids if "removed_at" not in registry.get(o, {})]
    bound = scheduler.latency_bound(len(active), settings.rate_limit, config)
    orgs: dict[str, Any] = {}
    for org_id in org_ids:
        meta, plan = metas[org_id], plans[org_id]
        last_poll = _num(meta.get("last_poll_at"))
        activity = scheduler.decay(
            _num(plan.get("activity")) or 0.0, now - (_num(plan.get("activity_at")) or now)
        )
        orgs[org_id] = {
            "last_poll": _iso(last_poll),
            "last_poll_mode": meta.get("last_poll_mode"),
            "last_full_sweep": _iso(meta.get("last_sweep_at")),
            "watermark": meta.get("watermark"),
            "lag": round(now - last_poll, 1) if last_poll else None,
            "errors": int(meta.get("errors", "0") or 0),
            "last_error": meta.get("last_error") or plan.get("last_failure") or None,
            "next_retry": _iso(plan.get("retry_at")),
            "baselined": meta.get("baselined") == "1",
            "sweep_in_progress": meta.get("sweep_active") == "1",
            "incremental_filter": "unsupported" if meta.get("filter_unsupported") == "1" else "ok",
            "records": int(client.hlen(keys.fingerprints(org_id, resource))),
            "change_rate_per_min": round(activity / (scheduler.ACTIVITY_HALF_LIFE / 60), 3),
            "latency_bound": round(bound, 1),
            "removed": "removed_at" in registry.get(org_id, {}),
        }
    tokens = TokenCache(client, settings)
    budget = RequestBudget(client, keys.digest(settings.client_id), settings.rate_limit)
    delivery = outbox.status(client, settings)
    warnings = list(delivery.get("warnings", []))
    if not scheduler.sweep_affordable(len(active), 1.0, settings.rate_limit, config):
        warnings.append(
            "the rate budget cannot afford a sweep of every org each ETBRIDGE_SWEEP_INTERVAL"
        )
    return {
        "generated_at": _iso(now),
        "orgs": orgs,
        "token": tokens.status(),
        "rate_budget": budget.status(),
        "outbox": delivery.get("outbox", {}),
        "sinks": {url: _iso_times(sink) for url, sink in delivery.get("sinks", {}).items()},
        "planner": {"latency_bound": round(bound, 1), "orgs": len(active)},
        "warnings": warnings,
    }


def _short(iso: str | None) -> str:
    """``2026-11-27T20:04:03.120Z`` -> ``2026-11-27 20:04:03`` (tables only)."""
    return iso[:19].replace("T", " ") if iso else "-"


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(doc: dict[str, Any]) -> str:
    """A readable table of :func:`collect`'s document."""
    lines = []
    tok = doc["token"]
    if tok.get("error"):
        line = f"token    ERROR {tok['error']}"
        if tok.get("error_description"):
            line += f": {_clip(tok['error_description'], 80)}"
        if tok.get("next_attempt_at"):
            line += f"  (next token request {_short(tok['next_attempt_at'])} UTC)"
    elif tok.get("expires_at"):
        line = (
            f"token    ok, expires {_short(tok['expires_at'])} UTC"
            f"  (fetched {_short(tok.get('fetched_at'))} UTC)"
        )
    else:
        line = "token    none cached (fetched on the fleet's first API call)"
    lines.append(line)
    bud = doc["rate_budget"]
    lines.append(
        f"budget   {bud.get('used')}/{bud.get('limit')} requests in the last 60 s"
        + (f"  PAUSED until {_short(bud['paused_until'])} UTC" if bud.get("paused_until") else "")
    )
    ob = doc.get("outbox", {})
    lines.append(
        f"outbox   pending {ob.get('pending', 0)}  retrying {ob.get('retrying', 0)}"
        f"  dead-lettered {ob.get('dead_lettered', 0)}"
    )
    lines.append("")
    lines.append(
        f"{'org':<10} {'last poll (UTC)':<19} {'lag':>6} {'last sweep (UTC)':<19} "
        f"{'records':>7} {'chg/min':>7} {'bound':>6} {'errors':>6}"
    )
    for org_id, org in doc["orgs"].items():
        lag = org["lag"]
        notes = []
        if org.get("removed"):
            notes.append("gone from the organizations endpoint")
        if org.get("last_error"):
            notes.append(_clip(str(org["last_error"])))
        if org.get("next_retry"):
            notes.append(f"next try {_short(org['next_retry'])}")
        if org.get("incremental_filter") == "unsupported":
            notes.append("sweeps only: incremental filter rejected")
        lines.append(
            f"{org_id:<10} {_short(org['last_poll']):<19} "
            f"{(f'{lag:.0f}s' if lag is not None else '-'):>6} "
            f"{_short(org['last_full_sweep']):<19} {org['records']:>7} "
            f"{org['change_rate_per_min']:>7} {org['latency_bound']:>5.0f}s "
            f"{org['errors']:>6}" + (f"  {'; '.join(notes)}" if notes else "")
        )
    if not doc["orgs"]:
        lines.append("(no org yet: set ETBRIDGE_ORGS, or wait for the planner's discovery)")
    if doc.get("sinks"):
        lines.append("")
        for url, sink in doc["sinks"].items():
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
            lines.append(line)
    for warning in doc.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)
