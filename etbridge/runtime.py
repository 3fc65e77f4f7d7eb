"""The object graph of one process, built once from the settings.

Celery's prefork children each build their own (sockets do not survive a
fork), lazily, on their first task.
"""

from __future__ import annotations

import os
import threading

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


class Runtime:
    """Redis client, HTTP session, shared token, fleet budget and API client of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every key this process's parts build (etb:app:<name>:… for an application).
        self.keyspace = settings.keyspace
        self.redis = redisconn.connect(
            settings.redis_url,
            socket_timeout=30,
            socket_connect_timeout=10,
            health_check_interval=30,
            retry_on_timeout=True,
        )
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
_runtime: Runtime | None = None
_pid = 0


def get(settings: Settings) -> Runtime:
    """This process's runtime (rebuilt in a forked child)."""
    global _runtime, _pid  # noqa: PLW0603 - one runtime per process, rebuilt after fork
    with _lock:
        if _runtime is None or _pid != os.getpid():
            _runtime = Runtime(settings)
            _pid = os.getpid()
        return _runtime
