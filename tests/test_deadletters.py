"""Dead letters are never dropped silently: retention, cap, warning, purge (real Redis)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from etbridge import cli, metrics, outbox, status
from etbridge.outbox import Relay
from etbridge.settings import Settings
from tests.support.delivery import SECRET, commit_events, drive, make_settings
from tests.support.receiver import Receiver, Reply


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        receiver.reply_default(Reply.error(500))  # every attempt fails: dead letters
        yield receiver


def _dead_letter(
    r: redis.Redis, redis_url: str, rx: Receiver, count: int, **over: object
) -> tuple[Settings, list[dict[str, Any]]]:
    settings = make_settings(redis_url, [rx.url], retry_schedule=[0], **over)
    relay = Relay(r, settings)
    events = commit_events(r, "1001", count)
    drive(
        relay,
        lambda: outbox.status(r, settings)["outbox"]["pending"] == 0,
        notify=["1001"],
    )
    relay.close()
    return settings, events


def test_the_cap_drops_the_oldest_loudly(
    r: redis.Redis, redis_url: str, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="etbridge")
    settings, events = _dead_letter(r, redis_url, rx, 5, dlq_maxlen=3)
    kept = [d.event_id for d in outbox.dlq_list(r, settings)]
    assert kept == [e["id"] for e in events[2:]]  # the newest three
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert sum("over ETBRIDGE_DLQ_MAXLEN dropped" in m for m in errors) == 2
    state = outbox.status(r, settings)
    facts = state["sinks"][rx.url]
    assert (facts["dead_lettered"], facts["dead_letters_dropped"]) == (3, 2)
    assert facts["dead_letter_fill"] == 1.0
    assert any("dead letters at 100% of ETBRIDGE_DLQ_MAXLEN" in w for w in state["warnings"])
    # `etbridge status` carries the warning, and the fill gauge reads it.

    doc = status.collect(r, settings)
    assert any("ETBRIDGE_DLQ_MAXLEN" in w for w in doc["warnings"])
    assert "WARNING: sink" in status.render(doc)
    fill = {m.name: m for m in metrics.gauges_from_status(doc, time.time())}
    assert fill["etbridge_dead_letter_fill"].samples[0].value == 1.0


def test_status_warns_as_the_cap_nears(r: redis.Redis, redis_url: str, rx: Receiver) -> None:
    settings, _ = _dead_letter(r, redis_url, rx, 3, dlq_maxlen=5)
    assert outbox.status(r, settings)["warnings"] == []  # 60 %
    settings, _ = _dead_letter(r, redis_url, rx, 1, dlq_maxlen=5)
    (warning,) = outbox.status(r, settings)["warnings"]
    assert "80% of ETBRIDGE_DLQ_MAXLEN" in warning


def test_retention_expires_old_dead_letters(
    r: redis.Redis, redis_url: str, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    settings, _ = _dead_letter(r, redis_url, rx, 2)
    assert settings.dlq_retention == 30 * 86400  # the default
    assert outbox.expire_dead_letters(r, settings) == 0
    assert outbox.expire_dead_letters(r, settings, now=time.time() + 29 * 86400) == 0
    caplog.set_level(logging.WARNING, logger="etbridge")
    assert outbox.expire_dead_letters(r, settings, now=time.time() + 31 * 86400) == 2
    assert outbox.dlq_list(r, settings) == []
    assert any("dead letters expired" in rec.getMessage() for rec in caplog.records)


def test_dlq_purge_by_id_and_before(
    r: redis.Redis,
    redis_url: str,
    rx: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, events = _dead_letter(r, redis_url, rx, 3)
    monkeypatch.chdir("/")
    for name, value in {
        "ETBRIDGE_CLIENT_ID": "c",
        "ETBRIDGE_CLIENT_SECRET": "s",
        "ETBRIDGE_REDIS_URL": redis_url,
        "ETBRIDGE_SINKS": rx.url,
        "ETBRIDGE_WEBHOOK_SECRET": SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["dlq", "purge"]) == 2
    assert cli.main(["dlq", "purge", events[0]["id"], "--before", "1d"]) == 2
    capsys.readouterr()
    assert cli.main(["dlq", "purge", events[1]["id"], "no-such-id"]) == 0
    assert capsys.readouterr().out.strip() == "purged 1 dead letter(s)"
    assert [d.event_id for d in outbox.dlq_list(r, settings)] == [events[0]["id"], events[2]["id"]]
    assert cli.main(["dlq", "purge", "--before", "2000-01-01T00:00:00Z"]) == 0
    assert len(outbox.dlq_list(r, settings)) == 2
    assert cli.main(["dlq", "purge", "--before", "2999-01-01T00:00:00Z"]) == 0
    assert capsys.readouterr().out.strip().endswith("purged 2 dead letter(s)")
    assert outbox.dlq_list(r, settings) == []
