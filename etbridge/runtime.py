"""The object graph of one process, built once from the settings: one :class:`Runtime`
per application the process serves.

Without ``ETBRIDGE_APPS_FILE`` that is the single application (``app`` None);
with it, each ``[apps.<name>]`` (its own token cache, budget, API client and
relay), and None names none. Celery's prefork children each build their own
(sockets do not survive a fork), lazily, on first use.
"""

from __future__ import annotations

import os
import threading

import redis
import requests

from etbridge import logs, metrics, redisconn
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
        self.session.hooks["response"].append(metrics.response_hook(settings.token_url))
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


_lock = threading.Lock()
_runtimes: dict[str | None, Runtime] = {}
_pid = 0
_built_from: Settings | None = None


def served(settings: Settings) -> tuple[str | None, ...]:
    """The applications this process serves: the file's names, else ``(None,)``."""
    if not settings.apps_file:
        return (None,)
    return tuple(app.name for app in settings.apps())


def get(settings: Settings, app: str | None = None) -> Runtime:
    """This process's runtime of application ``app`` (rebuilt in a forked child).

    ``app`` None is the single application; with the apps file it names none,
    and neither does a name the file does not list: :class:`UnknownApplication`.
    """
    global _pid, _built_from  # one registry per process, rebuilt after fork
    with _lock:
        if _pid != os.getpid() or _built_from is not settings:
            _runtimes.clear()
            _pid, _built_from = os.getpid(), settings
        found = _runtimes.get(app)
        if found is None:
            found = Runtime(_app_settings(settings, app), _shared_redis())
            _runtimes[app] = found
        return found


def every(settings: Settings) -> list[Runtime]:
    """The runtimes of every application served, in the file's order."""
    return [get(settings, app) for app in served(settings)]


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


def _shared_redis() -> redis.Redis | None:
    """The Redis client of a runtime built already in this process (None: the first)."""
    first = next(iter(_runtimes.values()), None)
    return first.redis if first is not None else None
