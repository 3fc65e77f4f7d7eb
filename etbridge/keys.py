"""The Redis key layout, owned in one place: :class:`Keyspace`.

The single application (no ``ETBRIDGE_APPS_FILE``) uses :data:`DEFAULT`, whose
keys start with ``etb:``. Each application of the apps file has its own
keyspace, ``etb:app:<name>:``, so applications share a Redis database
without sharing a key. Keys that one atomic step touches share a hash tag,
so the layout also runs on Redis Cluster: all of one org's state lives under
``{org:ID}``, one budget under ``{APPID}``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

ROOT = "etb"
# As apps.py's application names: no ':' (a key separator) nor braces (hash tags).
_APP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def digest(*parts: str) -> str:
    """A short, stable hash of the parts: keys never carry secrets or raw URLs."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def org_tag(org_id: str) -> str:
    return f"{{org:{org_id}}}"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Every key of one application: ``etb:…`` for ``app=None``, ``etb:app:<app>:…`` else."""

    app: str | None = None
    prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.app is not None and not _APP_NAME.match(self.app):
            raise ValueError(f"not an application name: {self.app!r}")
        object.__setattr__(self, "prefix", ROOT if self.app is None else f"{ROOT}:app:{self.app}")

    @property
    def pattern(self) -> str:
        """A SCAN MATCH pattern of this keyspace's keys (the default's also matches apps')."""
        return f"{self.prefix}:*"

    # --- auth (one token per token URL + client id + scope) -----------------

    def token(self, cache_id: str) -> str:
        return f"{self.prefix}:token:{cache_id}"

    def token_lock(self, cache_id: str) -> str:
        return f"{self.prefix}:token:{cache_id}:lock"

    def token_failure(self, cache_id: str) -> str:
        return f"{self.prefix}:token:{cache_id}:failure"

    # --- the fleet's request budget -----------------------------------------

    def budget(self, app_id: str) -> str:
        return f"{self.prefix}:budget:{{{app_id}}}"

    def budget_pause(self, app_id: str) -> str:
        return f"{self.prefix}:budget:{{{app_id}}}:pause"

    def budget_pace(self, app_id: str) -> str:
        """String: the pacer's next theoretical arrival time (µs)."""
        return f"{self.prefix}:budget:{{{app_id}}}:pace"

    # --- per org state --------------------------------------------------------

    def snapshots(self, org_id: str, resource: str) -> str:
        """Hash: resource id -> digest + compressed canonical JSON of the last stored version."""
        return f"{self.prefix}:{org_tag(org_id)}:snap:{resource}"

    def snapshot_dict(self, org_id: str, resource: str) -> str:
        """String: the org's zlib preset dictionary for its snapshots (written once)."""
        return f"{self.prefix}:{org_tag(org_id)}:zdict:{resource}"

    def fingerprints(self, org_id: str, resource: str) -> str:
        """Hash: resource id -> hex digest, as state before snapshot format 3 kept it
        (emptied as those records are rewritten; state.py)."""
        return f"{self.prefix}:{org_tag(org_id)}:fp:{resource}"

    def org_meta(self, org_id: str, resource: str) -> str:
        """Hash: watermark, last poll/sweep, errors, sweep cursor."""
        return f"{self.prefix}:{org_tag(org_id)}:meta:{resource}"

    def sweep_seen(self, org_id: str, resource: str) -> str:
        """Set: ids seen by the sweep in progress (deletions = stored - seen)."""
        return f"{self.prefix}:{org_tag(org_id)}:seen:{resource}"

    def deletion_hold(self, org_id: str, resource: str) -> str:
        """Hash: the org's held deletions (ids, reason, since; approved ids once approved)."""
        return f"{self.prefix}:{org_tag(org_id)}:delhold:{resource}"

    def lease(self, org_id: str) -> str:
        return f"{self.prefix}:{org_tag(org_id)}:lease"

    def fence(self, org_id: str) -> str:
        """Counter: the fencing token of the newest lease."""
        return f"{self.prefix}:{org_tag(org_id)}:fence"

    def outbox(self, org_id: str) -> str:
        """Stream: the org's committed change events, field ``event`` = envelope JSON."""
        return f"{self.prefix}:{org_tag(org_id)}:outbox"

    # --- planner and delivery -------------------------------------------------

    def plan(self, org_id: str, resource: str) -> str:
        """Hash: the planner's facts of one (org, resource): deadlines, estimates, backoff."""
        return f"{self.prefix}:{org_tag(org_id)}:plan:{resource}"

    @property
    def plan_summary(self) -> str:
        """String: JSON of the last allocation's figures and warnings (status reads it)."""
        return f"{self.prefix}:plan:summary"

    @property
    def plan_sends(self) -> str:
        """Sorted set: planned polls (JSON) scored by send time; beat's sender publishes them."""
        return f"{self.prefix}:plan:sends"

    @property
    def plan_cursor(self) -> str:
        """String: the earliest send time the last tick left free (expires when it has passed)."""
        return f"{self.prefix}:plan:cursor"

    @property
    def plan_delays(self) -> str:
        """List: the latest dispatch delays, "DEADLINE DELAY" (epoch seconds), newest first."""
        return f"{self.prefix}:plan:delays"

    @property
    def plan_started(self) -> str:
        """String: a counter of planned polls started (the workers' measured capacity)."""
        return f"{self.prefix}:plan:started"

    @property
    def plan_workers(self) -> str:
        """Hash: the planner's last reading of plan_started: ``count``, ``at``, ``rate``."""
        return f"{self.prefix}:plan:workers"

    @property
    def plan_lock(self) -> str:
        """String: one planner tick per tick interval (a second beat plans nothing)."""
        return f"{self.prefix}:plan:lock"

    @property
    def discovery(self) -> str:
        """String: one read of the organizations endpoint per discovery interval."""
        return f"{self.prefix}:discovery"

    def relay_partition(self, org_id: str, sink_name: str) -> str:
        """Hash: one (org, sink) partition's retry state (head, attempts, next_at, error)."""
        return f"{self.prefix}:{org_tag(org_id)}:relay:{sink_name}"

    def relay_lock(self, org_id: str, sink_name: str) -> str:
        """String: the token of the relay working on the partition."""
        return f"{self.relay_partition(org_id, sink_name)}:lock"

    @property
    def relay_due(self) -> str:
        """Sorted set: "SINK:ORG" partitions scored by when their delivery is due."""
        return f"{self.prefix}:relay:due"

    @property
    def relay_sweep(self) -> str:
        """String: one sweep of all orgs' consumer groups per interval."""
        return f"{self.prefix}:relay:sweep"

    @property
    def relay_retry(self) -> str:
        """Sorted set: "SINK:ORG" partitions of ``order=none`` sinks, scored by their next retry."""
        return f"{self.prefix}:relay:retry"

    # --- registries -------------------------------------------------------------

    @property
    def orgs(self) -> str:
        """Hash: the org ids etbridge polls, with their discovery facts (JSON)."""
        return f"{self.prefix}:orgs"

    @property
    def state_format(self) -> str:
        """String: "3" once no worker from before snapshot format 3 can run (stateformat.py)."""
        return f"{self.prefix}:state:format"

    def sink_state(self, sink_name: str) -> str:
        """Hash: a sink's disabled flag and last error."""
        return f"{self.prefix}:sink:{sink_name}"

    def dead_letters(self, sink_name: str) -> str:
        """Stream: events a sink gave up on, with their last error."""
        return f"{self.prefix}:sink:{sink_name}:dlq"

    def sink_pace(self, sink_name: str) -> str:
        """String: the sink's ``rate=`` pace (GCRA theoretical arrival time, ms)."""
        return f"{self.prefix}:sink:{sink_name}:pace"

    def attempt_log(self, org_id: str, sink_name: str, day: int) -> str:
        """Hash: event id -> JSON list of its attempts at one sink that day (UTC day number)."""
        return f"{self.prefix}:{org_tag(org_id)}:attempts:{sink_name}:{day}"


DEFAULT = Keyspace()
"""The single application's keys (no ``ETBRIDGE_APPS_FILE``): the layout before issue 18."""
