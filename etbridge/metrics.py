"""Prometheus metrics, served by the celery worker on ``ETBRIDGE_METRICS_PORT``.

Counters and histograms are recorded where the work happens, in the prefork
children (prometheus-client's multiprocess mode sums them at scrape time);
gauges of fleet state are read from Redis by :class:`StatusCollector` at each
scrape (every worker reports the same values: dashboards take ``max`` of
these and ``sum`` of the counters). Which signals set up what, and why no
metric has a value before its first ``labels()``: docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    import redis
    import requests

    from etbridge.outbox import DeliveryResult
    from etbridge.poller import PollResult
    from etbridge.settings import Settings

log = logging.getLogger("etbridge.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own variable (read by the library, so not one of our settings)."""

# --- recorded in the process that did the work --------------------------------------

API_REQUESTS = Counter(
    "etbridge_api_requests",
    "Event Temple API answers, by endpoint (ids replaced by :id) and HTTP status.",
    ["endpoint", "status"],
)
API_RATE_LIMITED = Counter(
    "etbridge_api_rate_limited",
    "429 answers from the Event Temple API (each pauses the whole fleet).",
    ["endpoint"],
)
TOKEN_REQUESTS = Counter(
    "etbridge_token_requests",
    "Requests to the OAuth token endpoint, by HTTP status.",
    ["status"],
)
POLLS = Counter(
    "etbridge_polls",
    "Polls of one org and resource, by mode (incremental|sweep) and outcome "
    "(ok|skipped|retriable_error|auth_error|inaccessible|lease_lost|error).",
    ["mode", "outcome"],
)
POLL_PAGES = Counter("etbridge_poll_pages", "Pages listed by polls, by mode.", ["mode"])
POLL_DURATION = Histogram(
    "etbridge_poll_duration_seconds",
    "Duration of completed polls, by mode.",
    ["mode"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
CHANGES = Counter(
    "etbridge_changes",
    "Change events committed to the outbox, by type (created|updated|deleted|snapshot).",
    ["type"],
)
DELIVERIES = Counter(
    "etbridge_deliveries",
    "Relay runs of one org's outbox to one sink, by sink name, kind and outcome "
    "(caught_up|budget|retry|waiting|paced|busy|disabled|filtered|lost_lock|unknown_sink).",
    ["sink", "kind", "outcome"],
)
EVENTS_DELIVERED = Counter(
    "etbridge_events_delivered",
    "Events a sink accepted, by sink name and kind.",
    ["sink", "kind"],
)
EVENTS_DEAD_LETTERED = Counter(
    "etbridge_events_dead_lettered",
    "Events a sink gave up on (moved to its dead-letter stream), by sink name and kind.",
    ["sink", "kind"],
)
DELETIONS = Counter(
    "etbridge_deletions",
    "Bookings a complete sweep did not list, by outcome (confirmed|extrapolated|approved|"
    "listing_lied|pending|held).",
    ["outcome"],
)
ACCESS_LOST = Counter(
    "etbridge_org_access_lost",
    "Times an org polled before became inaccessible, by reason (http_403|http_404|vanished: "
    "no longer listed by the organizations endpoint).",
    ["reason"],
)


def _per_app(metric: Counter) -> Counter:
    """The same counter with an ``app`` label first, for the applications of the apps file.

    Not registered: it is served from prometheus-client's multiprocess files,
    under the same name as ``metric``, so the single application's series keep
    their labels exactly and an application's carry ``app="<name>"`` too.
    """
    name = metric._name.removesuffix("_total")
    return Counter(name, metric._documentation, ["app", *metric._labelnames], registry=None)


_APP_COUNTERS = {
    c: _per_app(c)
    for c in (
        API_REQUESTS,
        API_RATE_LIMITED,
        TOKEN_REQUESTS,
        POLLS,
        POLL_PAGES,
        CHANGES,
        DELIVERIES,
        EVENTS_DELIVERED,
        EVENTS_DEAD_LETTERED,
    )
}


def _of(metric: Counter, app: str | None, *labels: str) -> Any:
    """``metric``'s child for ``labels``: the ``app``-labelled one for an application."""
    if app is None:
        return metric.labels(*labels)
    return _APP_COUNTERS[metric].labels(app, *labels)


RECORDED = (
    "etbridge_api_requests_total",
    "etbridge_api_rate_limited_total",
    "etbridge_token_requests_total",
    "etbridge_polls_total",
    "etbridge_poll_pages_total",
    "etbridge_poll_duration_seconds",
    "etbridge_changes_total",
    "etbridge_deliveries_total",
    "etbridge_events_delivered_total",
    "etbridge_events_dead_lettered_total",
    "etbridge_deletions_total",
    "etbridge_org_access_lost_total",
)
"""Names (as exposed) of the metrics recorded by the workers' children."""

# --- read from Redis at scrape time -----------------------------------------------------

FLEET_GAUGES = {
    "etbridge_status_up": "1 when the last scrape could read the fleet's state from Redis.",
    "etbridge_outbox_pending": "Events not yet accepted by a sink (unread + in flight), by sink.",
    "etbridge_outbox_retrying": "Orgs whose head event waits for a retry, by sink.",
    "etbridge_dead_letters": "Events in a sink's dead-letter stream, by sink.",
    "etbridge_sink_disabled": "1 when a sink is disabled (410 Gone, or failing), by sink.",
    "etbridge_dead_letter_fill": "Fraction of ETBRIDGE_DLQ_MAXLEN a sink's dead letters use.",
    "etbridge_org_lag_seconds": "Seconds since an org's last completed poll.",
    "etbridge_org_sweep_age_seconds": "Seconds since an org's last complete sweep.",
    "etbridge_org_poll_errors": "Failed polls of an org since it was first polled.",
    "etbridge_org_records": "Records stored for an org (its snapshot hash size).",
    "etbridge_org_poll_interval_seconds": "Seconds between an org's polls that the budget gives.",
    "etbridge_org_deletion_interval_seconds": "Seconds between an org's complete sweeps that "
    "the budget gives (how soon a deletion is seen at the most).",
    "etbridge_org_deletions_held": "Deletions of an org held by the mass-delete guard.",
    "etbridge_org_accessible": "0 while the API refuses an org polled before, else 1.",
    "etbridge_token_expires_in_seconds": "Seconds until the shared token expires (<0: none).",
    "etbridge_token_error": "1 while the token endpoint's last refusal is remembered, by code.",
    "etbridge_rate_budget_limit": "API requests the fleet may make in any 60 s span.",
    "etbridge_rate_budget_used": "API requests the fleet made in the last 60 s.",
    "etbridge_rate_budget_paused_seconds": "Seconds the fleet stays paused after a 429.",
}
"""Fleet-wide gauges the serving process computes from Redis at each scrape."""


# --- the requests hook -----------------------------------------------------------------

_ID_SEGMENT = re.compile(r"^[0-9]+$|^[0-9a-f]{8}-[0-9a-f-]{27,}$", re.IGNORECASE)


def endpoint(path: str) -> str:
    """A path with its id segments replaced (``/v2/bookings/4711`` → ``/v2/bookings/:id``).

    Keeps the ``endpoint`` label's values few, whatever ids the fleet reads.
    """
    segments = [":id" if _ID_SEGMENT.match(s) else s for s in path.split("/")]
    return "/".join(segments) or "/"


def _origin_path(url: str | None) -> tuple[str, str]:
    parts = urlsplit(url or "")
    return parts.netloc.lower(), parts.path.rstrip("/") or "/"


def response_hook(token_url: str, app: str | None = None) -> Callable[..., None]:
    """A ``requests`` response hook counting API answers and token requests.

    The runtime's one session carries both, so the hook tells them apart by
    URL: a request to ``token_url`` is a token request, any other an API
    call. It also counts the 401 that :class:`~etbridge.auth.BearerAuth`
    retried (in ``response.history`` at this point; redirects are added to
    the history only after the hooks ran, and each fires the hook itself).
    Never raises: metrics must not break a request. ``app``: the application
    (its counters carry an ``app`` label; None: the single one, no label).
    """
    token = _origin_path(token_url)

    def hook(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        try:
            for resp in (*response.history, response):
                record_response(resp.request.url, resp.status_code, token, app)
        except Exception:
            log.debug("metrics hook failed", exc_info=True)

    return hook


def record_response(
    url: str | None, status: int, token: tuple[str, str], app: str | None = None
) -> None:
    """Count one HTTP answer (see :func:`response_hook`)."""
    origin_path = _origin_path(url)
    if origin_path == token:
        _of(TOKEN_REQUESTS, app, str(status)).inc()
        return
    ep = endpoint(origin_path[1])
    _of(API_REQUESTS, app, ep, str(status)).inc()
    if status == 429:
        _of(API_RATE_LIMITED, app, ep).inc()


# --- polls and deliveries ---------------------------------------------------------------


def record_polls(results: Iterable[PollResult], app: str | None = None) -> None:
    """Count the results of one ``poll_org`` (one per resource) of application ``app``."""
    for r in results:
        if r.skipped:
            _of(POLLS, app, r.mode, "skipped").inc()
            continue
        _of(POLLS, app, r.mode, "ok").inc()
        _of(POLL_PAGES, app, r.mode).inc(r.pages)
        POLL_DURATION.labels(r.mode).observe(r.ms / 1000)
        for kind, count in r.counts.items():
            if count:
                _of(CHANGES, app, kind).inc(count)


def record_poll_failure(mode: str, outcome: str, app: str | None = None) -> None:
    """Count a poll that raised (``retriable_error``, ``auth_error``, ``lease_lost``, ``error``)."""
    _of(POLLS, app, "sweep" if mode == "sweep" else "incremental", outcome).inc()


def record_deletions(counts: dict[str, int]) -> None:
    """Count one sweep's deletion outcomes (see :data:`DELETIONS`)."""
    for outcome, n in counts.items():
        if n:
            DELETIONS.labels(outcome).inc(n)


def record_access_lost(reason: str) -> None:
    ACCESS_LOST.labels(reason).inc()


def record_delivery(result: DeliveryResult, settings: Settings) -> None:
    """Count one relay run and the events it delivered or dead-lettered."""
    kind = next((s.kind for s in settings.sinks if s.name == result.sink_name), "unknown")
    app = settings.app
    _of(DELIVERIES, app, result.sink_name, kind, result.outcome).inc()
    if result.delivered:
        _of(EVENTS_DELIVERED, app, result.sink_name, kind).inc(result.delivered)
    if result.dead_lettered:
        _of(EVENTS_DEAD_LETTERED, app, result.sink_name, kind).inc(result.dead_lettered)


# --- fleet gauges at scrape time -----------------------------------------------------------


def _age(now: float, iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def gauges_from_status(
    doc: dict[str, Any],
    now: float,
    app: str | None = None,
    fam: dict[str, GaugeMetricFamily] | None = None,
) -> list[Metric]:
    """The fleet gauges of one :func:`etbridge.status.collect` document (pure).

    ``app``: an application's section (every gauge but ``etbridge_status_up``
    gets an ``app`` label first), added to the families ``fam`` of the others.
    """
    fam = {} if fam is None else fam
    first = ["app"] if app is not None else []

    class _Gauge:
        def __init__(self, family: GaugeMetricFamily) -> None:
            self.family = family

        def add_metric(self, values: list[str], value: float) -> None:
            self.family.add_metric(([app] if app is not None else []) + values, value)

    def gauge(name: str, labels: Iterable[str] = ()) -> _Gauge:
        if name not in fam:
            fam[name] = GaugeMetricFamily(name, FLEET_GAUGES[name], labels=first + list(labels))
        return _Gauge(fam[name])

    if "etbridge_status_up" not in fam:
        up = GaugeMetricFamily("etbridge_status_up", FLEET_GAUGES["etbridge_status_up"])
        up.add_metric([], 1.0)
        fam["etbridge_status_up"] = up
    _sink_gauges(doc, gauge)
    _org_gauges(doc, now, gauge)
    token = doc.get("token", {})
    expires_in = _age(now, token.get("expires_at"))
    gauge("etbridge_token_expires_in_seconds").add_metric(
        [], -expires_in if expires_in is not None else -1.0
    )
    if token.get("error"):
        gauge("etbridge_token_error", ["code"]).add_metric([str(token["error"])], 1.0)
    budget = doc.get("rate_budget", {})
    gauge("etbridge_rate_budget_limit").add_metric([], budget.get("limit") or 0)
    gauge("etbridge_rate_budget_used").add_metric([], budget.get("used") or 0)
    paused = _age(now, budget.get("paused_until"))
    gauge("etbridge_rate_budget_paused_seconds").add_metric(
        [], max(0.0, -paused) if paused is not None else 0.0
    )
    return list(fam.values())


_GaugeOf = Callable[..., Any]


def _sink_gauges(doc: dict[str, Any], gauge: _GaugeOf) -> None:
    sink_labels = ("sink", "kind")
    for sink in doc.get("sinks", {}).values():
        lv = [str(sink.get("name", "")), str(sink.get("kind", ""))]
        gauge("etbridge_outbox_pending", sink_labels).add_metric(lv, sink.get("pending") or 0)
        gauge("etbridge_outbox_retrying", sink_labels).add_metric(lv, sink.get("retrying") or 0)
        gauge("etbridge_dead_letters", sink_labels).add_metric(lv, sink.get("dead_lettered") or 0)
        gauge("etbridge_dead_letter_fill", sink_labels).add_metric(
            lv, sink.get("dead_letter_fill") or 0.0
        )
        gauge("etbridge_sink_disabled", sink_labels).add_metric(
            lv, 1.0 if sink.get("disabled") else 0.0
        )


def _org_gauges(doc: dict[str, Any], now: float, gauge: _GaugeOf) -> None:
    unit_labels = ("org_id", "resource")
    for org_id, org in doc.get("orgs", {}).items():
        if org.get("removed"):
            continue
        for resource, unit in (org.get("resources") or {"": org}).items():
            lv = [org_id, resource]
            if unit.get("lag") is not None:
                gauge("etbridge_org_lag_seconds", unit_labels).add_metric(lv, unit["lag"])
            sweep_age = _age(now, unit.get("last_full_sweep"))
            if sweep_age is not None:
                gauge("etbridge_org_sweep_age_seconds", unit_labels).add_metric(lv, sweep_age)
            errors = unit.get("errors") or 0
            gauge("etbridge_org_poll_errors", unit_labels).add_metric(lv, errors)
            gauge("etbridge_org_records", unit_labels).add_metric(lv, unit.get("records") or 0)
            for field, name in (
                ("poll_interval", "etbridge_org_poll_interval_seconds"),
                ("deletion_interval", "etbridge_org_deletion_interval_seconds"),
            ):
                if unit.get(field) is not None:
                    gauge(name, unit_labels).add_metric(lv, unit[field])
        gauge("etbridge_org_deletions_held", ["org_id"]).add_metric(
            [org_id], org.get("deletions_held") or 0
        )
        gauge("etbridge_org_accessible", ["org_id"]).add_metric(
            [org_id], 0.0 if org.get("accessible") is False else 1.0
        )


class StatusCollector:
    """A prometheus collector yielding :data:`FLEET_GAUGES`, read from Redis per scrape."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._client = client
        self._lock = threading.Lock()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            from etbridge import redisconn

            self._client = redisconn.connect(
                self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5
            )
        return self._client

    def collect(self) -> Iterator[Metric]:
        from etbridge import runtime, status

        # One scrape at a time: a slow Redis must not pile up concurrent reads.
        with self._lock:
            try:
                docs: dict[str | None, dict[str, Any]]
                if not self.settings.apps_file:
                    docs = {None: status.collect(self._redis(), self.settings)}
                else:
                    # Each application's own keys (and those a reload added).
                    with contextlib.suppress(Exception):
                        runtime.refresh(self.settings)
                    docs = {
                        app.name: status.collect(self._redis(), app.settings(self.settings))
                        for app in self.settings.apps()
                    }
            except Exception as exc:
                log.warning("metrics: cannot read the fleet state: %s", type(exc).__name__)
                up = GaugeMetricFamily("etbridge_status_up", FLEET_GAUGES["etbridge_status_up"])
                up.add_metric([], 0.0)
                yield up
                return
        now, fam = time.time(), dict[str, GaugeMetricFamily]()
        for name, doc in docs.items():
            gauges_from_status(doc, now, name, fam)
        yield from fam.values()


# --- serving from the worker's main process ----------------------------------------------


class _Server:
    """What :func:`serve` started, for :func:`shutdown`."""

    server: Any = None
    own_dir: str | None = None


_state = _Server()


def prepare_multiprocess_dir() -> str:
    """Make sure ``PROMETHEUS_MULTIPROC_DIR`` names a directory; return it.

    Call before the pool forks. An operator's directory is used as it is;
    otherwise a fresh temporary one is made (and removed by :func:`shutdown`).
    The value class is chosen again, as prometheus-client fixes it at import.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        if _state.own_dir is not None:
            return _state.own_dir
        path = tempfile.mkdtemp(prefix="etbridge-metrics-")
        _state.own_dir = path
        os.environ[MULTIPROC_ENV] = path
    os.makedirs(path, exist_ok=True)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def registry(settings: Settings, path: str) -> CollectorRegistry:
    """What the worker serves: the children's summed files plus the fleet gauges."""
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=path)  # type: ignore[no-untyped-call]
    reg.register(StatusCollector(settings))
    return reg


def serve(settings: Settings) -> bool:
    """Start the metrics HTTP server on ``settings.metrics_port``; False if it cannot bind."""
    if settings.metrics_port is None:
        return False
    path = prepare_multiprocess_dir()
    try:
        server, _thread = start_http_server(
            settings.metrics_port, registry=registry(settings, path)
        )
    except OSError as exc:
        # Another worker on this host holds the port: run without metrics rather than die.
        log.error(
            "metrics: cannot listen on ETBRIDGE_METRICS_PORT=%d: %s", settings.metrics_port, exc
        )
        return False
    _state.server = server
    log.info("metrics served on port=%d dir=%s", settings.metrics_port, path)
    return True


def mark_dead(pid: int) -> None:
    """A pool child exits: drop its live-gauge files (its counters stay in the sums)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def shutdown() -> None:
    """Stop the server and remove the directory :func:`prepare_multiprocess_dir` made."""
    if _state.server is not None:
        with contextlib.suppress(Exception):
            _state.server.shutdown()
            _state.server.server_close()
        _state.server = None
    if _state.own_dir is not None:
        shutil.rmtree(_state.own_dir, ignore_errors=True)
        _state.own_dir = None


def connect_worker_signals(settings: Settings) -> None:
    """Serve metrics from ``celery worker``'s main process (call from ``etbridge.worker``)."""
    from celery import signals

    def on_worker_init(**_: Any) -> None:
        prepare_multiprocess_dir()

    def on_worker_ready(**_: Any) -> None:
        serve(settings)

    def on_child_exit(pid: int | None = None, **_: Any) -> None:
        mark_dead(pid or os.getpid())

    def on_worker_shutdown(**_: Any) -> None:
        shutdown()

    # Strong references and fixed uids: connecting twice never doubles a handler.
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="etbridge.metrics.init")
    signals.worker_ready.connect(on_worker_ready, weak=False, dispatch_uid="etbridge.metrics.ready")
    signals.worker_process_shutdown.connect(
        on_child_exit, weak=False, dispatch_uid="etbridge.metrics.child"
    )
    signals.worker_shutdown.connect(
        on_worker_shutdown, weak=False, dispatch_uid="etbridge.metrics.shutdown"
    )
