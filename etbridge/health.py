"""Health endpoints of ``celery worker`` and ``celery beat`` on ``ETBRIDGE_HEALTH_PORT``.

``GET /healthz`` (liveness): the process, its main thread and its event loop
are alive. ``GET /readyz`` (readiness): Redis and the broker answer, the
shared token is usable (or its failure is a known ``invalid_client``), the
heartbeat is recent and the process is not shutting down (with the apps file:
each application's token, see docs/applications.md). Both answer JSON,
200 or 503, with no secrets. The probes never ask for a token. Protocol and
fields: docs/health.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from etbridge import logs, shutdown
from etbridge.settings import Settings

log = logging.getLogger("etbridge.health")

# The worker's event loop (or beat's publishing) records a heartbeat this often...
HEARTBEAT_INTERVAL = 5.0
# ...a process whose heartbeat is older is not ready...
READY_MAX_AGE = 30.0
# ...and one whose heartbeat is this old is wedged: liveness fails and it is restarted.
# Long enough for a broker reconnect (the loop restarts) not to cost a restart.
LIVE_MAX_AGE = 300.0
# A check of Redis or the broker gives up after this long (probes time out at a few s).
CHECK_TIMEOUT = 2.0
# Readiness is computed at most this often, however many probes arrive.
READY_CACHE = 1.0
# A token error that means "the credentials are wrong": the process is fine, stays up
# and ready (the contract: never a crash loop); the operator sees it in status and logs.
KNOWN_TOKEN_ERRORS = frozenset({"invalid_client"})


@dataclass
class Health:
    """The state the endpoints report for one process (``role`` worker or beat)."""

    settings: Settings
    role: str
    started: float = field(default_factory=time.monotonic)
    last_beat: float | None = None
    _ready_at: float = 0.0
    _ready_doc: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def beat(self) -> None:
        """Record a heartbeat (the event loop turned, or beat published its tick)."""
        self.last_beat = time.monotonic()

    def heartbeat_age(self) -> float:
        """Seconds since the last heartbeat (since start while none was recorded)."""
        return time.monotonic() - (self.last_beat if self.last_beat is not None else self.started)

    # --- liveness -------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = self.heartbeat_age()
        main = threading.main_thread().is_alive()
        checks: dict[str, dict[str, Any]] = {
            "main_thread": {"ok": main},
            "heartbeat": {"ok": age < LIVE_MAX_AGE, "age": round(age, 1), "max": LIVE_MAX_AGE},
        }
        return self._doc(checks)

    # --- readiness ------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._ready_at > READY_CACHE:
                self._ready_doc = self._readiness()
                self._ready_at = time.monotonic()
            doc = self._ready_doc
        return doc["status"] == "ok", doc

    def _readiness(self) -> dict[str, Any]:
        age = self.heartbeat_age()
        checks: dict[str, dict[str, Any]] = {
            "redis": _timed(self._check_redis),
            "broker": _timed(self._check_broker),
            "token": _guarded(self._check_token),
            "heartbeat": {"ok": age < READY_MAX_AGE, "age": round(age, 1), "max": READY_MAX_AGE},
            "shutdown": {"ok": not shutdown.requested(), "requested": shutdown.requested()},
        }
        return self._doc(checks)[1]

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=CHECK_TIMEOUT,
            socket_connect_timeout=CHECK_TIMEOUT,
        )

    def _check_redis(self) -> dict[str, Any]:
        client = self._redis()
        try:
            client.ping()
        finally:
            client.close()
        return {}

    def _check_broker(self) -> dict[str, Any]:
        from kombu.connection import Connection

        # kombu's Redis transport pings on connect; AMQP opens a connection.
        with Connection(self.settings.broker_url, connect_timeout=CHECK_TIMEOUT) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=CHECK_TIMEOUT)
        return {}

    def _check_token(self) -> dict[str, Any]:
        from etbridge.auth import TokenCache

        client = self._redis()
        try:
            if not self.settings.apps_file:
                facts = TokenCache(client, self.settings).status()
                return token_check(facts, time.time())
            return self._check_app_tokens(client, TokenCache)
        finally:
            client.close()

    def _check_app_tokens(self, client: Any, cache: Any) -> dict[str, Any]:
        """Each application's token (apps file): ready when every one is, or cannot be.

        ``token_check`` per application; ``ok`` is all of them (a known
        ``invalid_client`` counts as ready, as for the single application).
        """
        from etbridge import runtime

        with contextlib.suppress(Exception):  # the applications of the last reload
            runtime.refresh(self.settings)
        now = time.time()
        apps = {
            app.name: token_check(cache(client, app.settings(self.settings)).status(), now)
            for app in self.settings.apps()
        }
        failing = sorted(name for name, check in apps.items() if not check["ok"])
        out: dict[str, Any] = {"apps": apps}
        if failing:
            # The one-check shape of the single application: _guarded adds ok=True.
            raise _AppsNotReady(out, failing)
        return out

    def _doc(self, checks: dict[str, dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
        ok = all(c["ok"] for c in checks.values())
        return ok, {
            "status": "ok" if ok else "fail",
            "role": self.role,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "uptime": round(time.monotonic() - self.started, 1),
            "checks": checks,
        }


def token_check(facts: dict[str, Any], now: float) -> dict[str, Any]:
    """Readiness of the shared token, from :meth:`TokenCache.status` facts (pure).

    Usable (``valid``), not fetched yet (``none``: the first poll fetches it; a
    probe never does), or expired with no failure (``expired``: refreshed on
    demand) are ready; so is a known ``invalid_client``. Any other failure of
    the last token request (the endpoint unreachable, 5xx, 429) is not.
    """
    expires = facts.get("expires_at")
    expires_in = _seconds_until(expires, now) if expires else None
    error = facts.get("error")
    if expires_in is not None and expires_in > 0:
        state, ok = "valid", True
    elif error:
        state, ok = str(error), str(error) in KNOWN_TOKEN_ERRORS
    else:
        state, ok = ("expired" if expires else "none"), True
    out: dict[str, Any] = {"ok": ok, "state": state}
    if expires_in is not None:
        out["expires_in"] = round(expires_in)
    return out


def _seconds_until(iso: str, now: float) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - now
    except ValueError:
        return None


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    out = _guarded(check)
    out["ms"] = round((time.monotonic() - started) * 1000, 1)
    return out


class _AppsNotReady(Exception):
    """Some application's token is not ready: the per-application doc goes with it."""

    def __init__(self, doc: dict[str, Any], failing: list[str]) -> None:
        super().__init__(", ".join(failing))
        self.doc = doc
        self.failing = failing


def _guarded(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **check()}
    except _AppsNotReady as exc:
        return {"ok": False, "failing": exc.failing, **exc.doc}
    except Exception as exc:
        # The class and a scrubbed, short message: never a URL's password or a secret.
        return {"ok": False, "error": type(exc).__name__, "detail": logs.scrub(str(exc))[:200]}


# --- the HTTP server ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass made by serve()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, doc = self.health.liveness()
        elif path == "/readyz":
            ok, doc = self.health.readiness()
        else:
            self._send(404, {"status": "fail", "error": "not found"})
            return
        self._send(200 if ok else 503, doc)

    def _send(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, sort_keys=True).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


class Server:
    """A running health server (``stop()`` it on shutdown)."""

    # All interfaces: the kubelet and the compose healthcheck probe the pod/container IP.
    def __init__(self, health: Health, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104
        handler = type("Handler", (_Handler,), {"health": health})
        self.health = health
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="etbridge-health", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(settings: Settings, role: str) -> Server | None:
    """Start serving on ``ETBRIDGE_HEALTH_PORT``; None (logged) if the port is taken."""
    if settings.health_port is None:
        return None
    health = Health(settings, role)
    try:
        server = Server(health, settings.health_port)
    except OSError as exc:
        log.error("health: cannot listen on ETBRIDGE_HEALTH_PORT=%d: %s", settings.health_port, exc)
        return None
    log.info("health served role=%s port=%d", role, server.port)
    return server


# --- Celery signals (connected by etbridge.worker) -------------------------------------------


class _Running:
    server: Server | None = None


_running = _Running()


def connect_signals(settings: Settings) -> None:
    """Serve health from the worker's main process and from beat."""
    from celery import signals

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        server = _running.server = serve(settings, "worker")
        if server is None:
            return
        server.health.beat()
        # The consumer's timer runs on the worker's event loop: when the loop is
        # wedged, the heartbeat goes stale and the probes say so.
        timer = getattr(sender, "timer", None)
        if timer is not None:
            timer.call_repeatedly(HEARTBEAT_INTERVAL, server.health.beat)

    def on_beat_init(**_: Any) -> None:
        server = _running.server = serve(settings, "beat")
        if server is None:
            return
        health = server.health

        def on_published(**_kw: Any) -> None:
            # Beat publishes the planner's tick every PLAN_TICK: each publish is a heartbeat.
            health.beat()

        signals.after_task_publish.connect(
            on_published, weak=False, dispatch_uid="etbridge.health.published"
        )

    def on_worker_shutdown(**_: Any) -> None:
        if _running.server is not None:
            _running.server.stop()
            _running.server = None

    signals.worker_ready.connect(on_worker_ready, weak=False, dispatch_uid="etbridge.health.ready")
    signals.beat_init.connect(on_beat_init, weak=False, dispatch_uid="etbridge.health.beat")
    signals.worker_shutdown.connect(
        on_worker_shutdown, weak=False, dispatch_uid="etbridge.health.shutdown"
    )
