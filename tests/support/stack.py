"""Build etbridge's real object graph against a sandbox and a test Redis."""

from __future__ import annotations

from typing import Any

import redis
import requests
import requests.auth

from etbridge import keys
from etbridge.runtime import Runtime
from etbridge.settings import Settings, load_settings
from tests.support.replies import stream_events
from tests.support.sandbox import Sandbox


def settings_for(sandbox: Sandbox, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "api_url": sandbox.url,
        "redis_url": redis_url,
        "rate_limit": 10_000,
        "orgs": [],
        "sinks": "redis-stream:test:events",
        "webhook_secret": None,
        "sentry_dsn": None,
    }
    values.update(overrides)
    return load_settings(**values)


def runtime_for(sandbox: Sandbox, redis_url: str, **overrides: Any) -> Runtime:
    return Runtime(settings_for(sandbox, redis_url, **overrides))


def outbox_events(client: redis.Redis, org_id: str) -> list[dict[str, Any]]:
    """Every envelope in an org's outbox, in commit order."""
    return stream_events(client, keys.DEFAULT.outbox(org_id))


class FixedToken(requests.auth.AuthBase):
    """Puts a fixed bearer token on every request (auth.py's BearerAuth stands in)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r
