"""``etbridge status`` against a real Redis: what it reads, how it shows it, no secrets.

Status reads Redis only (no token, no API): the token endpoint here is a port
nothing listens on, so a request would fail the test.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import redis

from etbridge import keys, state, status
from etbridge.errors import AuthenticationError
from etbridge.events import parse_timestamp
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings
from etbridge.tokencache import TokenCache

SECRET = "status-test-secret-value"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(redis_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "client_id": "status-client",
        "client_secret": SECRET,
        "token_url": f"http://127.0.0.1:{closed_port()}/oauth/token",
        "api_url": f"http://127.0.0.1:{closed_port()}",
        "redis_url": redis_url,
        "rate_limit": 100,
        "orgs": [],
        "sinks": "redis-stream:test:events",
        "webhook_secret": None,
        "sentry_dsn": None,
    }
    values.update(extra)
    return Settings(**values)


def test_an_empty_redis_is_a_status_with_nothing_in_it(r: redis.Redis, redis_url: str) -> None:
    doc = status.collect(r, make_settings(redis_url))
    assert doc["orgs"] == {}
    assert doc["token"]["expires_at"] is None and doc["token"]["error"] is None
    assert doc["rate_budget"]["used"] == 0 and doc["rate_budget"]["paused_until"] is None
    assert parse_timestamp(doc["generated_at"]) is not None
    assert "no org yet" in status.render(doc)


def test_orgs_budget_and_token_failure_are_shown(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url)
    now = time.time()
    state.register_org(r, keys.DEFAULT, "1001", name="One")
    state.register_org(r, keys.DEFAULT, "1002", name="Two")
    state.mark_removed(r, keys.DEFAULT, "1002")
    state.OrgState(r, keys.DEFAULT, "1001", "bookings").set_meta(
        last_poll_at=str(now - 30), last_sweep_at=str(now - 600), errors="2", last_error="boom"
    )
    budget = RequestBudget(r, keys.DEFAULT, keys.digest(settings.client_id), settings.rate_limit)
    budget.try_acquire()
    budget.pause(5)
    cache = TokenCache(r, settings)
    # A remembered refusal, as the fleet would have stored it.
    cache._record_failure(
        AuthenticationError(
            "token endpoint refused the credentials (invalid_client): bad secret",
            code="invalid_client",
        ),
        base=30,
        cap=900,
    )

    doc = status.collect(r, settings)
    one = doc["orgs"]["1001"]
    assert 29 <= one["lag"] <= 40 and one["errors"] == 2 and one["last_error"] == "boom"
    assert parse_timestamp(one["last_poll"]) is not None
    assert parse_timestamp(one["last_full_sweep"]) is not None
    assert doc["orgs"]["1002"]["removed"] is True
    assert doc["rate_budget"]["used"] == 1
    assert parse_timestamp(doc["rate_budget"]["paused_until"]) is not None
    assert doc["token"]["error"] == "invalid_client"
    assert doc["token"]["error_description"] == "bad secret"
    assert parse_timestamp(doc["token"]["next_attempt_at"]) is not None

    table = status.render(doc)
    assert "ERROR invalid_client" in table and "PAUSED until" in table
    assert "gone from the organizations endpoint" in table
    assert SECRET not in table and SECRET not in repr(doc)
