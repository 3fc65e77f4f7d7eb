"""The sink objects one process uses, built once per sink and closed together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import redis

from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import Sink, make_sink

if TYPE_CHECKING:
    import celery
    import requests


class SinkCache:
    """Builds each sink on first use (connections, signers) and closes them all."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        broker_app: celery.Celery | None = None,
        session: requests.Session | None = None,
        sinks: Mapping[str, Sink] | None = None,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.broker_app = broker_app
        self.session = session
        self._sinks: dict[str, Sink] = dict(sinks or {})

    def get(self, spec: SinkSpec) -> Sink:
        found = self._sinks.get(spec.name)
        if found is None:
            found = make_sink(
                spec,
                self.settings,
                redis_client=self.redis,
                broker_app=self.broker_app,
                session=self.session,
            )
            self._sinks[spec.name] = found
        return found

    def close(self) -> None:
        for sink in self._sinks.values():
            sink.close()
        self._sinks.clear()
