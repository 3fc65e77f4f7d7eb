"""The attempt log and the ``events`` commands, against a real Redis and receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from etbridge import cli
from etbridge.outbox import Relay, attempts
from tests.support.delivery import SECRET, commit, drive, envelope, make_settings
from tests.support.receiver import Receiver, Reply

STREAM = "redis-stream:etb-test:events"
LEAKY = f"oops: key {SECRET} and Authorization: Bearer abc.def.ghi leaked"


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        yield receiver


def test_scrub_drops_keys_and_tokens() -> None:
    text = attempts.scrub(LEAKY + " " + "x" * 500)
    assert SECRET not in text and "abc.def.ghi" not in text
    assert "key ***" in text or "whsec_***" in text  # a registered secret, or the shape
    assert "Bearer ***" in text
    assert attempts.scrub("whsec_c29tZXRoaW5nLXVua25vd24=") == "whsec_***"
    assert len(text) <= attempts.EXCERPT_CHARS


def test_attempts_are_logged_per_event_and_sink(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    settings = make_settings(redis_url, [rx.url, STREAM], retry_schedule=[0, 0.05, 0.05, 0.05])
    relay = Relay(r, settings)
    event = envelope("1001", "7", seq=1)
    rx.reply_next(Reply(status=500, body=LEAKY.encode()), Reply.unavailable(retry_after=0))
    commit(r, "1001", [event])
    drive(relay, lambda: len(rx.delivered_ids()) == 1, notify=["1001"])
    hook, stream = settings.sinks
    logged = attempts.read(r, settings, "1001", event["id"], [hook.name, stream.name])
    tries = logged[hook.name]
    assert [(a.attempt, a.ok) for a in tries] == [(1, False), (2, False), (3, True)]
    assert [a.status for a in tries] == ["ServerError HTTP 500", "ServerError HTTP 503", "HTTP 200"]
    assert all(a.ms > 0 for a in tries)
    assert "leaked" in tries[0].excerpt and SECRET not in tries[0].excerpt
    assert "abc.def.ghi" not in tries[0].excerpt
    assert tries[-1].excerpt == "ok"  # the receiver's answer
    assert [(a.ok, a.status) for a in logged[stream.name]] == [(True, "accepted")]
    # Kept for the outbox retention, not for ever.
    day = int(time.time() // 86400)
    ttl = r.pttl(f"etb:{{org:1001}}:attempts:{hook.name}:{day}")
    assert settings.outbox_retention * 1000 < ttl <= (settings.outbox_retention + 86400) * 1000


def test_a_timeout_is_logged_with_its_class(r: redis.Redis, redis_url: str, rx: Receiver) -> None:
    settings = make_settings(redis_url, [rx.url], webhook_timeout=0.3, retry_schedule=[0, 60])
    relay = Relay(r, settings)
    event = envelope("1001", "8", seq=2)
    rx.reply_next(Reply.timeout(2.0))
    commit(r, "1001", [event])
    relay.deliver("1001", settings.sinks[0].name)
    (only,) = attempts.read(r, settings, "1001", event["id"], [settings.sinks[0].name]).values()
    assert [(a.ok, a.status) for a in only] == [(False, "TransportError")]
    assert "no answer" in only[0].excerpt and only[0].ms >= 250


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, rx: Receiver) -> list[str]:
    sinks = [rx.url, STREAM]
    monkeypatch.chdir("/")
    for name, value in {
        "ETBRIDGE_CLIENT_ID": "test-client",
        "ETBRIDGE_CLIENT_SECRET": "test-client-secret",
        "ETBRIDGE_REDIS_URL": redis_url,
        "ETBRIDGE_SINKS": ",".join(sinks),
        "ETBRIDGE_WEBHOOK_SECRET": SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    return sinks


def test_events_show_and_list(
    r: redis.Redis,
    redis_url: str,
    rx: Receiver,
    cli_env: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(redis_url, cli_env, retry_schedule=[0, 0.05, 0.05])
    relay = Relay(r, settings)
    history = [
        envelope("1001", "7", "created", seq=10),
        envelope("1001", "7", changes={"status": {"from": "tentative", "to": "definite"}}, seq=11),
        envelope("1001", "9", "created", seq=12),
        envelope("1001", "7", changes={"name": {"from": "A", "to": "B"}}, seq=13),
    ]
    rx.reply_next(Reply.error(502))
    commit(r, "1001", history)
    drive(relay, lambda: len(rx.delivered_ids()) == 4, notify=["1001"])
    capsys.readouterr()

    assert cli.main(["events", "show", history[0]["id"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"event {history[0]['id']}  org=1001  type=com.eventtemple.booking.created"
    )
    body = out[out.index("{") : out.index("\nsink ")]
    assert json.loads(body) == history[0]
    hook_part = out[out.index(f"sink {rx.url}") : out.index(f"sink {STREAM}")]
    assert "#1  FAIL ServerError HTTP 502" in hook_part and "#2  ok   HTTP 200" in hook_part
    assert "accepted" in out[out.index(f"sink {STREAM}") :]

    assert cli.main(["events", "list", "--org", "1001", "--booking", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == [history[i]["id"] for i in (3, 1, 0)]
    assert "status: tentative→definite" in lines[1]
    assert lines[0].split()[1] == "updated" and lines[2].split()[1] == "created"

    assert cli.main(["events", "show", "no-such-event"]) == 1
    assert "no retained event" in capsys.readouterr().err
