"""Sentry, set up in one place (on when ``SENTRY_DSN`` is set).

Errors are exceptions that escape a task; expected, retried conditions (429s,
a 5xx a retry fixes, timeouts) are WARNING logs, kept as breadcrumbs only.
Beat's ``plan`` task is a cron monitor (:data:`PLAN_MONITOR`): a successful
tick checks in at most once a minute per process (Sentry Crons takes no
interval under a minute; the planner ticks every second or two), so a dead
scheduler pages someone.

``before_send`` scrubs secrets wherever they appear: known values (client
secret, webhook key, cached tokens registered with :func:`logs.add_secret`),
Authorization / signature headers, and any key that names a secret.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.crons import MonitorStatus, capture_checkin
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.redis import RedisIntegration

from etbridge import __version__, logs
from etbridge.settings import Settings

if TYPE_CHECKING:
    from sentry_sdk._types import MonitorConfig

FILTERED = "[Filtered]"
_SECRET_KEY = re.compile(
    r"(secret|token|password|passwd|authorization|api[-_]?key|dsn|signature|cookie|whsec)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/=]+")

PLAN_TASK = "etbridge.plan"
PLAN_MONITOR = "etbridge-plan"
"""The Sentry Crons monitor slug of the planner."""
PLAN_MONITOR_CONFIG: MonitorConfig = {
    "schedule": {"type": "interval", "value": 1, "unit": "minute"},
    # Minutes of silence before Sentry calls a check-in missed.
    "checkin_margin": 3,
    "max_runtime": 5,
    "failure_issue_threshold": 2,
    "recovery_threshold": 1,
}
CHECKIN_EVERY = 60.0
_checkin_lock = threading.Lock()
_last_checkin = [float("-inf")]


# One return per JSON type.
def _scrub_value(value: Any, key: str | None = None) -> Any:  # noqa: PLR0911
    if key is not None and _SECRET_KEY.search(key) and isinstance(value, (str, bytes)):
        return FILTERED
    if isinstance(value, str):
        value = logs.scrub(value)
        value = _BEARER.sub(r"\1" + FILTERED, value)
        return _WHSEC.sub(FILTERED, value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        # Header lists come as [name, value] pairs.
        pair = len(value) == 2  # noqa: PLR2004
        if pair and isinstance(value[0], str) and _SECRET_KEY.search(value[0]):
            return [value[0], FILTERED]
        return [_scrub_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(v) for v in value)
    return value


def scrub_event(event: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """``before_send``/``before_breadcrumb``: the event with every secret replaced."""
    scrubbed: dict[str, Any] = _scrub_value(event)
    return scrubbed


def plan_checkin(sender: Any = None, **_: Any) -> None:
    """``task_success`` receiver: a successful ``plan`` checks in (once a minute at most)."""
    if getattr(sender, "name", None) != PLAN_TASK:
        return
    now = time.monotonic()
    with _checkin_lock:
        if now - _last_checkin[0] < CHECKIN_EVERY:
            return
        _last_checkin[0] = now
    capture_checkin(
        monitor_slug=PLAN_MONITOR, status=MonitorStatus.OK, monitor_config=PLAN_MONITOR_CONFIG
    )


def init(settings: Settings) -> None:
    """Turn Sentry on (when ``SENTRY_DSN`` is set) for this process."""
    if settings.sentry_dsn is None:
        return
    from celery import signals

    logs.add_settings_secrets(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        release=f"etbridge@{__version__}",
        environment=settings.environment,
        send_default_pii=False,
        # Local variables of a frame may hold a secret or token.
        include_local_variables=False,
        integrations=[
            # Future beat entries of a minute or more are monitored by the
            # integration; the two-second planner tick is not (see plan_checkin).
            CeleryIntegration(monitor_beat_tasks=True, exclude_beat_tasks=[r"^plan$"]),
            RedisIntegration(),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        before_send=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_event,
        traces_sample_rate=0.0,
    )
    signals.task_success.connect(plan_checkin, weak=False, dispatch_uid="etbridge.sentry.plan")
