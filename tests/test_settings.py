"""Settings: defaults, parsing, and one-line errors for operator mistakes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etbridge.settings import SettingsError, load_settings, mask_url, parse_sink

BASE = {"ETBRIDGE_CLIENT_ID": "client", "ETBRIDGE_CLIENT_SECRET": "s3cret-value-xyz"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    for name in list(os.environ):
        if name.startswith("ETBRIDGE_") or name == "SENTRY_DSN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)


def test_defaults_follow_the_contract() -> None:
    s = load_settings()
    assert s.scope == "crm_read"
    assert s.api_url == "https://api.eventtemple.com"
    assert s.token_url == "https://api.eventtemple.com/oauth/token"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.broker_url == s.redis_url
    assert s.rate_limit == 100
    assert s.poll_interval == 30
    assert s.sweep_interval == 3600
    assert s.lookback == 300
    assert s.ignore_fields == ["updated_at"]
    assert s.emit_baseline is False
    assert [sink.url for sink in s.sinks] == ["redis-stream:etbridge:events"]
    assert s.retry_schedule == [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    assert s.webhook_timeout == 15
    assert s.sentry_dsn is None
    assert s.orgs == []
    assert s.resources == ["bookings"]


def test_lists_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETBRIDGE_ORGS", "12, 34,56")
    monkeypatch.setenv("ETBRIDGE_API_URL", "http://127.0.0.1:9000/")
    monkeypatch.setenv("ETBRIDGE_IGNORE_FIELDS", "updated_at,notes")
    monkeypatch.setenv("ETBRIDGE_RETRY_SCHEDULE", "0,1.5,3")
    monkeypatch.setenv("ETBRIDGE_BROKER_URL", "redis://127.0.0.1:6380/1")
    s = load_settings()
    assert s.orgs == ["12", "34", "56"]
    assert s.api_url == "http://127.0.0.1:9000"
    assert s.token_url == "http://127.0.0.1:9000/oauth/token"
    assert s.ignore_fields == ["updated_at", "notes"]
    assert s.retry_schedule == [0, 1.5, 3]
    assert s.broker_url == "redis://127.0.0.1:6380/1"


def test_secret_is_not_in_repr() -> None:
    s = load_settings()
    assert "s3cret-value-xyz" not in repr(s)
    assert "s3cret-value-xyz" not in str(s)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ETBRIDGE_RATE_LIMIT", "abc", "ETBRIDGE_RATE_LIMIT"),
        ("ETBRIDGE_RATE_LIMIT", "0", "ETBRIDGE_RATE_LIMIT"),
        ("ETBRIDGE_POLL_INTERVAL", "-5", "ETBRIDGE_POLL_INTERVAL"),
        ("ETBRIDGE_SWEEP_INTERVAL", "0", "ETBRIDGE_SWEEP_INTERVAL"),
        ("ETBRIDGE_SINKS", "ftp://example.com/x", "ETBRIDGE_SINKS"),
        ("ETBRIDGE_SINKS", "celery://only-queue", "ETBRIDGE_SINKS"),
        ("ETBRIDGE_SINKS", "http://127.0.0.1:9/hook", "ETBRIDGE_WEBHOOK_SECRET"),
        ("ETBRIDGE_API_URL", "not a url", "ETBRIDGE_API_URL"),
        ("ETBRIDGE_REDIS_URL", "http://localhost", "ETBRIDGE_REDIS_URL"),
        ("ETBRIDGE_RETRY_SCHEDULE", "1,x,3", "ETBRIDGE_RETRY_SCHEDULE"),
        ("ETBRIDGE_EMIT_BASELINE", "maybe", "ETBRIDGE_EMIT_BASELINE"),
        ("ETBRIDGE_WEBHOOK_SECRET", "not-whsec", "ETBRIDGE_WEBHOOK_SECRET"),
    ],
)
def test_operator_mistakes_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert "s3cret-value-xyz" not in message


def test_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETBRIDGE_CLIENT_SECRET")
    with pytest.raises(SettingsError, match="ETBRIDGE_CLIENT_SECRET: is required"):
        load_settings()


def test_webhook_sink_with_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETBRIDGE_SINKS", "http://127.0.0.1:9/hook?types=updated&fields=status&x=1")
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    (sink,) = load_settings().sinks
    assert sink.kind == "webhook"
    assert sink.target == "http://127.0.0.1:9/hook?x=1"
    assert sink.filter.types == ("updated",)
    assert sink.filter.fields == ("status",)


def test_parse_sinks() -> None:
    s = parse_sink("redis-stream://:pw@10.0.0.1:6380/2/events?orgs=1,2")
    assert s.kind == "redis-stream"
    assert s.key == "events"
    assert s.redis_url == "redis://:pw@10.0.0.1:6380/2"
    assert s.filter.orgs == ("1", "2")
    assert "pw" not in s.display
    assert "pw" not in s.name
    tls = parse_sink("redis-streams://h:6379/0/k")
    assert tls.redis_url == "rediss://h:6379/0"
    c = parse_sink("celery://notifications/app.tasks.on_change")
    assert (c.kind, c.queue, c.task) == ("celery", "notifications", "app.tasks.on_change")
    with pytest.raises(ValueError, match="unknown event type"):
        parse_sink("redis-stream:k?types=exploded")
    assert mask_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("https://h/hook?token=abc&x=1") == "https://h/hook?token=***&x=1"


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "etbridge", "status"],
        [sys.executable, "-m", "celery", "-A", "etbridge.worker", "worker", "--pool", "solo"],
    ],
)
def test_entry_points_exit_with_one_line(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    env.update(BASE, ETBRIDGE_RATE_LIMIT="abc")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert 1 <= len(err) <= 3, proc.stderr
    assert "ETBRIDGE_RATE_LIMIT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sink_list_keeps_filter_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ETBRIDGE_SINKS",
        "redis-stream:a?types=updated,created&orgs=12,34, celery://q/t.x,"
        "https://h.example/hook?fields=status,name",
    )
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    a, b, c = load_settings().sinks
    assert (a.key, a.filter.types, a.filter.orgs) == ("a", ("updated", "created"), ("12", "34"))
    assert (b.queue, b.task) == ("q", "t.x")
    assert c.filter.fields == ("status", "name")


def test_broker_queue_type_quorum_only_with_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().broker_queue_type == "classic"
    monkeypatch.setenv("ETBRIDGE_BROKER_QUEUE_TYPE", "quorum")
    with pytest.raises(SettingsError) as info:
        load_settings()  # the broker is the default Redis
    assert str(info.value) == (
        "configuration error: ETBRIDGE_BROKER_QUEUE_TYPE: quorum queues need a RabbitMQ "
        "broker (ETBRIDGE_BROKER_URL=amqp://… or amqps://…)"
    )
    monkeypatch.setenv("ETBRIDGE_BROKER_URL", "amqps://u:p@rabbit.example:5671//")
    assert load_settings().broker_queue_type == "quorum"
    monkeypatch.setenv("ETBRIDGE_BROKER_QUEUE_TYPE", "stream")
    with pytest.raises(SettingsError, match=r"^[^\n]*ETBRIDGE_BROKER_QUEUE_TYPE: Input should be"):
        load_settings()
