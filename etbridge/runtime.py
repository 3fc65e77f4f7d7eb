"""The object graph of one process, built once from the settings: one :class:`Runtime`
per application the process serves.

Without ``ETBRIDGE_APPS_FILE`` that is the single application (``app`` None);
with it, each ``[apps.<name>]`` (its own token cache, budget, API client and
relay), and None names none. Celery's prefork children each build their own
(sockets do not survive a fork), lazily, on first use. :func:`refresh`
follows ``etbridge apps reload`` (appsreload.py); a removed application is
*retired*: never polled, its outbox still delivered until drained.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis
import requests

from etbridge import appsreload, logs, metrics, redisconn
from etbridge.apps import AppConfig, AppsFileError
from etbridge.auth import BearerAuth, TokenCache
from etbridge.client import EventTempleClient, Session
from etbridge.outbox import Relay
from etbridge.poller import Poller
from etbridge.pollhooks import Hooks
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings

# Retries within one planned poll: one, for a blip. A resource that fails again
# is recorded (planstore.record_failure) and planned again on its backoff by
# the planner, instead of holding a worker through the client's full schedule
# (four retries: ~4.5 s on a failing resource, measured).
PLANNED_RETRIES = 1

log = logging.getLogger("etbridge.apps")


def connect_redis(settings: Settings) -> redis.Redis:
    return redisconn.connect(
        settings.redis_url,
        socket_timeout=30,
        socket_connect_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )


class UnknownApplication(LookupError):
    """A task names an application this process does not serve (removed from the file)."""


class Runtime:
    """Redis client, HTTP session, shared token, fleet budget and API client of one process."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        # The application's name (None: the single one of ETBRIDGE_CLIENT_ID).
        self.app = settings.app
        # Every key this process's parts build (etb:app:<name>:… for an application).
        self.keyspace = settings.keyspace
        # The applications of one process share its Redis client (its connection pool).
        self.redis = client if client is not None else connect_redis(settings)
        self.session = Session()
        # API calls and token requests share this session: one hook counts both,
        # and one registers every token it carries as a secret for logs and Sentry.
        self.session.hooks["response"].append(
            metrics.response_hook(settings.token_url, settings.app)
        )
        self.session.hooks["response"].append(logs.secret_hook)
        self.tokens = TokenCache(self.redis, settings, session=self.session)
        self.budget = RequestBudget.for_settings(settings, self.redis)
        auth = BearerAuth(self.tokens)
        self.api = EventTempleClient(settings, auth=auth, budget=self.budget, session=self.session)
        # The same session, token and budget; only the retries differ.
        self.planned_api = EventTempleClient(
            settings,
            auth=auth,
            budget=self.budget,
            session=self.session,
            max_retries=PLANNED_RETRIES,
        )
        self._relay: Relay | None = None

    def poller(
        self,
        *,
        hooks: Hooks | None = None,
        planned: bool = False,
    ) -> Poller:
        """A poller; ``planned``: for the planner's polls (PLANNED_RETRIES retries a request)."""
        return Poller(
            self.redis,
            self.settings,
            self.planned_api if planned else self.api,
            hooks=hooks,
        )

    @property
    def relay(self) -> Relay:
        """The outbox relay (built on first use: a poll-only worker never opens sinks)."""
        if self._relay is None:
            # Webhooks get their own session: slow receivers never hold API connections.
            self._relay = Relay(self.redis, self.settings, session=requests.Session())
        return self._relay


_lock = threading.RLock()
_runtimes: dict[str | None, Runtime] = {}
_pid = 0
_built_from: Settings | None = None
# Removed from the file by a reload: their last configuration, for delivery only.
_retired: dict[str, AppConfig] = {}


class _Process:
    """The shared Redis client, and what this process knows of the apps-file generation."""

    def __init__(self) -> None:
        self.client: redis.Redis | None = None
        self.seen: int | None = None  # the generation read (None: not looked yet)
        self.checked = 0.0  # when it last looked (monotonic)
        self.refused: int | None = None  # the generation whose bad file it logged


_state = _Process()


def _registry(settings: Settings) -> None:
    """Start this process's registry afresh after a fork or for other settings."""
    global _pid, _built_from, _state
    if _pid != os.getpid() or _built_from is not settings:
        _runtimes.clear()
        _retired.clear()
        _pid, _built_from, _state = os.getpid(), settings, _Process()


def served(settings: Settings) -> tuple[str | None, ...]:
    """The applications this process serves: the file's names, else ``(None,)``."""
    if not settings.apps_file:
        return (None,)
    return tuple(app.name for app in settings.apps())


def retired(settings: Settings) -> tuple[str, ...]:
    """Applications removed by a reload whose outbox this process still delivers."""
    with _lock:
        _registry(settings)
        return tuple(_retired)


def get(settings: Settings, app: str | None = None, *, retired: bool = False) -> Runtime:
    """This process's runtime of application ``app`` (rebuilt in a forked child).

    ``app`` None is the single application; with the apps file it names none,
    and neither does a name the file does not list: :class:`UnknownApplication`.
    ``retired``: a removed application's too (to deliver its outbox).
    """
    with _lock:
        _registry(settings)
        if app is not None and app in _retired:
            if not retired:
                raise UnknownApplication(f"application {app!r} was removed from ETBRIDGE_APPS_FILE")
            config: Settings | None = _retired[app].settings(settings)
        else:
            config = None
        found = _runtimes.get(app)
        if found is None:
            found = Runtime(config or _app_settings(settings, app), shared_redis(settings))
            _runtimes[app] = found
        return found


def every(settings: Settings) -> list[Runtime]:
    """The runtimes of every application served, in the file's order."""
    return [get(settings, app) for app in served(settings)]


def forget(settings: Settings, app: str) -> None:
    """A retired application's outbox is delivered: this process drops it."""
    with _lock:
        _registry(settings)
        _retired.pop(app, None)
        _drop(app)


def refresh(settings: Settings, *, force: bool = False) -> bool:
    """Read the apps file again if ``etbridge apps reload`` bumped the generation.

    Looks at Redis at most every ``CHECK_EVERY`` seconds (``force``: now). A
    file that is bad by then is logged once per generation and changes
    nothing. True when the applications were read again.
    """
    if not settings.apps_file:
        return False
    with _lock:
        _registry(settings)
        now = time.monotonic()
        if not force and now - _state.checked < appsreload.CHECK_EVERY:
            return False
        _state.checked = now
        current = appsreload.generation(shared_redis(settings))
        if current == _state.seen:
            return False
        try:
            apps = appsreload.read(settings)
        except AppsFileError as exc:
            if _state.refused != current:
                _state.refused = current
                log.error("apps file not reloaded, the last good applications stay: %s", exc)
            return False
        first, _state.seen = _state.seen is None, current
        _apply(settings, apps, quiet=first)
        return True


def _apply(settings: Settings, apps: tuple[AppConfig, ...], *, quiet: bool) -> None:
    old = {app.name: app for app in settings.apps()}
    new = {app.name: app for app in apps}
    for name, config in old.items():
        if name not in new:
            _retired[name] = config
            _drop(name)  # rebuilt from its last configuration when a delivery needs it
        elif new[name] != config:
            _drop(name)  # changed: rebuilt from the new configuration
    for name in new:
        _retired.pop(name, None)
    settings._apps = apps
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if added or removed or not quiet:
        log.info(
            "applications reloaded: %s (added: %s; removed: %s)",
            ", ".join(new),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )


def _drop(app: str) -> None:
    rt = _runtimes.pop(app, None)
    if rt is not None and rt._relay is not None:
        rt._relay.close()


def _app_settings(settings: Settings, app: str | None) -> Settings:
    if not settings.apps_file:
        if app is not None:
            raise UnknownApplication(f"application {app!r}: no ETBRIDGE_APPS_FILE is set")
        return settings
    for config in settings.apps():
        if config.name == app:
            return config.settings(settings)
    if app is None:
        raise UnknownApplication("a task without an application (ETBRIDGE_APPS_FILE is set)")
    raise UnknownApplication(f"application {app!r} is not in ETBRIDGE_APPS_FILE")


def shared_redis(settings: Settings) -> redis.Redis:
    """The Redis client every runtime of this process shares (one connection pool)."""
    with _lock:
        _registry(settings)
        if _state.client is None:
            _state.client = connect_redis(settings)
        return _state.client
