"""The Redis key layout, owned in one place.

Every key starts with ``etb:``. Keys that one atomic step touches share a
hash tag, so the layout also runs on Redis Cluster: all of one org's state
lives under ``{org:ID}``.
"""

from __future__ import annotations

import hashlib

PREFIX = "etb"


def digest(*parts: str) -> str:
    """A short, stable hash of the parts: keys never carry secrets or raw URLs."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def org_tag(org_id: str) -> str:
    return f"{{org:{org_id}}}"


# --- auth (one token per token URL + client id + scope) ---------------------


def token(cache_id: str) -> str:
    return f"{PREFIX}:token:{cache_id}"


def token_lock(cache_id: str) -> str:
    return f"{PREFIX}:token:{cache_id}:lock"


def token_failure(cache_id: str) -> str:
    return f"{PREFIX}:token:{cache_id}:failure"


# --- the fleet's request budget ---------------------------------------------


def budget(app_id: str) -> str:
    return f"{PREFIX}:budget:{{{app_id}}}"


def budget_pause(app_id: str) -> str:
    return f"{PREFIX}:budget:{{{app_id}}}:pause"


def budget_pace(app_id: str) -> str:
    """String: the pacer's next theoretical arrival time (µs)."""
    return f"{PREFIX}:budget:{{{app_id}}}:pace"


# --- per org state ------------------------------------------------------------


def snapshots(org_id: str, resource: str) -> str:
    """Hash: resource id -> digest + compressed canonical JSON of the last stored version."""
    return f"{PREFIX}:{org_tag(org_id)}:snap:{resource}"


def snapshot_dict(org_id: str, resource: str) -> str:
    """String: the org's zlib preset dictionary for its snapshots (written once)."""
    return f"{PREFIX}:{org_tag(org_id)}:zdict:{resource}"


def fingerprints(org_id: str, resource: str) -> str:
    """Hash: resource id -> hex digest, as state before snapshot format 3 kept it (emptied
    as those records are rewritten; state.py)."""
    return f"{PREFIX}:{org_tag(org_id)}:fp:{resource}"


def org_meta(org_id: str, resource: str) -> str:
    """Hash: watermark, last poll/sweep, errors, sweep cursor."""
    return f"{PREFIX}:{org_tag(org_id)}:meta:{resource}"


def sweep_seen(org_id: str, resource: str) -> str:
    """Set: ids seen by the sweep in progress (deletions = stored - seen)."""
    return f"{PREFIX}:{org_tag(org_id)}:seen:{resource}"


def deletion_hold(org_id: str, resource: str) -> str:
    """Hash: the org's held deletions (ids, reason, since; approved ids once approved)."""
    return f"{PREFIX}:{org_tag(org_id)}:delhold:{resource}"


def lease(org_id: str) -> str:
    return f"{PREFIX}:{org_tag(org_id)}:lease"


def fence(org_id: str) -> str:
    """Counter: the fencing token of the newest lease."""
    return f"{PREFIX}:{org_tag(org_id)}:fence"


def outbox(org_id: str) -> str:
    """Stream: the org's committed change events, field ``event`` = envelope JSON."""
    return f"{PREFIX}:{org_tag(org_id)}:outbox"


# --- planner and delivery -----------------------------------------------------------


def plan(org_id: str, resource: str) -> str:
    """Hash: the planner's facts of one (org, resource): deadlines, estimates, backoff."""
    return f"{PREFIX}:{org_tag(org_id)}:plan:{resource}"


PLAN_SUMMARY = f"{PREFIX}:plan:summary"
"""String: JSON of the last allocation's fleet-wide figures and warnings (status reads it)."""

PLAN_SENDS = f"{PREFIX}:plan:sends"
"""Sorted set: planned polls (JSON) scored by their send time; beat's sender publishes them."""

PLAN_CURSOR = f"{PREFIX}:plan:cursor"
"""String: the earliest send time the last tick left free (expires when it has passed)."""

PLAN_DELAYS = f"{PREFIX}:plan:delays"
"""List: the latest dispatch delays, "DEADLINE DELAY" (epoch seconds), newest first."""

PLAN_STARTED = f"{PREFIX}:plan:started"
"""String: a counter of planned polls started, fleet-wide (the workers' measured capacity)."""

PLAN_WORKERS = f"{PREFIX}:plan:workers"
"""Hash: the planner's last reading of PLAN_STARTED: ``count``, ``at``, ``rate`` (starts/s)."""


PLAN_LOCK = f"{PREFIX}:plan:lock"
"""String: one planner tick per tick interval, fleet-wide (a second beat plans nothing)."""

DISCOVERY = f"{PREFIX}:discovery"
"""String: one read of the organizations endpoint per discovery interval, fleet-wide."""


def relay_partition(org_id: str, sink_name: str) -> str:
    """Hash: one (org, sink) partition's retry state (head, attempts, next_at, error)."""
    return f"{PREFIX}:{org_tag(org_id)}:relay:{sink_name}"


def relay_lock(org_id: str, sink_name: str) -> str:
    """String: the token of the relay working on the partition."""
    return f"{relay_partition(org_id, sink_name)}:lock"


RELAY_DUE = f"{PREFIX}:relay:due"
"""Sorted set: "SINK:ORG" partitions scored by when their delivery is due."""

RELAY_SWEEP = f"{PREFIX}:relay:sweep"
"""String: one sweep of all orgs' consumer groups per interval, fleet-wide."""


# --- fleet-wide registries ----------------------------------------------------

ORGS = f"{PREFIX}:orgs"  # Hash: org id -> JSON (name, discovered_at, removed_at)
"""Hash: the org ids etbridge polls, with their discovery facts."""

STATE_FORMAT = f"{PREFIX}:state:format"
"""String: "3" once no worker from before snapshot format 3 can run (stateformat.py)."""


def sink_state(sink_name: str) -> str:
    """Hash: a sink's disabled flag and last error."""
    return f"{PREFIX}:sink:{sink_name}"


def dead_letters(sink_name: str) -> str:
    """Stream: events a sink gave up on, with their last error."""
    return f"{PREFIX}:sink:{sink_name}:dlq"


# --- delivery options (issue 14) -----------------------------------------------


RELAY_RETRY = f"{PREFIX}:relay:retry"
"""Sorted set: "SINK:ORG" partitions of ``order=none`` sinks, scored by their next retry."""


def sink_pace(sink_name: str) -> str:
    """String: the sink's ``rate=`` pace (GCRA theoretical arrival time, ms)."""
    return f"{PREFIX}:sink:{sink_name}:pace"


def attempt_log(org_id: str, sink_name: str, day: int) -> str:
    """Hash: event id -> JSON list of its attempts at one sink that day (UTC day number)."""
    return f"{PREFIX}:{org_tag(org_id)}:attempts:{sink_name}:{day}"
