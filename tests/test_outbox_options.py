"""Per-sink delivery options against a real Redis and a real loopback receiver.

The circuit breaker (``disable_after=``), ``order=none`` and ``rate=``; the
retry state they keep is checked through ``status`` and what arrives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from etbridge import outbox
from etbridge.outbox import DISABLED, Relay
from etbridge.outbox.retrystate import RetryState
from tests.support.delivery import (
    SECRET,
    commit_events,
    drive,
    make_settings,
    stream_events,
)
from tests.support.receiver import Receiver, Reply

STREAM = "redis-stream:etb-test:events"
# Long enough (about 2 s of retries) that the breaker, not the schedule, ends it.
SLOW_RETRY = "retry=0;0.2;0.2;0.2;0.2;0.2;0.2;0.2;0.2;0.2;0.2;0.2"


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        yield receiver


# --- the retry state (pure) -----------------------------------------------------------


def test_retry_state_strict_and_per_entry() -> None:
    strict = RetryState({}, strict=True)
    assert strict.attempts("1-0") == 0 and not strict.tried("1-0")
    written = strict.failed("1-0", 1, 50.0, "HTTP 500", 10.0)
    assert written["head"] == "1-0" and strict.partition_next_at() == 50.0
    assert strict.attempts("1-0") == 1 and strict.attempts("2-0") == 0
    assert strict.retrying() == 1
    assert set(strict.settled(["1-0"])) == {"head", "attempts", "next_at", "error", "error_at"}
    assert strict.retrying() == 0 and strict.settled(["2-0"]) == {}

    loose = RetryState({}, strict=False)
    loose.failed("1-0", 2, 50.0, "HTTP 500", 10.0)
    loose.failed("3-0", 1, 20.0, "timeout", 10.0)
    assert loose.partition_next_at() == 0.0  # nothing holds the partition
    assert (loose.attempts("1-0"), loose.entry_next_at("3-0"), loose.retrying()) == (2, 20.0, 2)
    assert loose.settled(["1-0", "9-0"]) == {"r:1-0": ""}
    assert loose.resumed() == {"r:3-0": ""}


# --- the circuit breaker ----------------------------------------------------------------


def test_a_sink_failing_for_disable_after_is_disabled_then_enabled(
    r: redis.Redis, redis_url: str, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{rx.url}?disable_after=1s&{SLOW_RETRY}"
    settings = make_settings(redis_url, [url, STREAM])
    relay = Relay(r, settings)
    hook = settings.sinks[0]
    events = commit_events(r, "1001", 3)
    rx.reply_default(Reply.error(500))
    caplog.set_level(logging.INFO, logger="etbridge")
    started = time.monotonic()
    drive(
        relay,
        lambda: outbox.status(r, settings)["sinks"][hook.display]["disabled"],
        notify=["1001"],
        timeout=20,
    )
    assert time.monotonic() - started >= 0.9  # not before disable_after
    facts = outbox.status(r, settings)["sinks"][hook.display]
    assert facts["disabled_reason"].startswith("every attempt failed for")
    assert facts["pending"] == 3 and facts["dead_lettered"] == 0  # kept, not dropped
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("sink disabled" in rec.getMessage() for rec in errors)  # Sentry's event
    # Disabled: no more attempts, the tick no longer schedules it.
    tried = len(rx.arrivals)
    assert relay.deliver("1001", hook.name).outcome == DISABLED
    assert all(s != hook.name for _o, s in relay.due(now=time.time() + 3600))
    assert len(rx.arrivals) == tried
    # The receiver is fixed; the operator enables the sink: it resumes where it stopped.
    rx.reply_default(Reply.ok())
    outbox.enable_sink(r, settings, url)
    drive(relay, lambda: len(rx.delivered_ids()) == 3)
    assert rx.delivered_ids() == [e["id"] for e in events]
    facts = outbox.status(r, settings)["sinks"][hook.display]
    assert facts["disabled"] is False and facts["failing_since"] is None
    assert facts["retrying"] == 0


def test_a_success_resets_the_breaker(r: redis.Redis, redis_url: str, rx: Receiver) -> None:
    url = f"{rx.url}?disable_after=1s&retry=0;0.3;0.3;0.3;0.3;0.3;0.3"
    settings = make_settings(redis_url, [url])
    relay = Relay(r, settings)
    hook = settings.sinks[0]
    # Every other attempt fails, for longer than disable_after in all.
    rx.reply_next(*[Reply.error(500), Reply.ok()] * 4)
    commit_events(r, "1001", 4)
    drive(relay, lambda: len(rx.delivered_ids()) == 4, notify=["1001"], timeout=20)
    facts = outbox.status(r, settings)["sinks"][hook.display]
    assert facts["disabled"] is False
    assert len(rx.arrivals) == 8


# --- order=none --------------------------------------------------------------------------


def test_order_none_lets_later_events_pass_a_failing_one(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    url = f"{rx.url}?order=none&retry=0;2.5;0.5;0.5"
    settings = make_settings(redis_url, [url])
    relay = Relay(r, settings)
    hook = settings.sinks[0]
    events = commit_events(r, "1001", 5)
    stuck = events[1]["id"]
    rx.reply_for(stuck, Reply.error(503))
    drive(relay, lambda: len(rx.delivered_ids()) == 4, notify=["1001"], timeout=10)
    others = [e["id"] for e in events if e["id"] != stuck]
    assert rx.delivered_ids() == others  # the others in commit order, past the failing one
    assert outbox.status(r, settings)["sinks"][hook.display]["retrying"] == 1
    # A new commit is not held up by the waiting retry either: notify delivers it now.
    later = commit_events(r, "1001", 1, start=5)
    relay_started = time.monotonic()
    drive(relay, lambda: later[0]["id"] in rx.delivered_ids(), notify=["1001"], timeout=10)
    assert time.monotonic() - relay_started < 1.0
    assert stuck not in rx.delivered_ids()
    # The receiver recovers; the failing event is delivered on its own schedule, same id.
    rx.reply_for(stuck, None)
    drive(relay, lambda: stuck in rx.delivered_ids(), timeout=10)
    assert rx.delivered_ids()[-1] == stuck
    assert [a.webhook_id for a in rx.arrivals].count(stuck) >= 2  # 2 unless the host crawls
    facts = outbox.status(r, settings)["sinks"][hook.display]
    assert (facts["pending"], facts["retrying"], facts["dead_lettered"]) == (0, 0, 0)


def test_order_none_dead_letters_after_its_own_schedule(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    settings = make_settings(redis_url, [f"{rx.url}?order=none&retry=0;0.1;0.1"])
    relay = Relay(r, settings)
    events = commit_events(r, "1001", 3)
    doomed = events[0]["id"]
    rx.reply_for(doomed, Reply.error(500))
    drive(relay, lambda: len(outbox.dlq_list(r, settings)) == 1, notify=["1001"], timeout=10)
    assert rx.delivered_ids() == [events[1]["id"], events[2]["id"]]
    assert [a.webhook_id for a in rx.arrivals].count(doomed) == 3
    assert outbox.status(r, settings)["outbox"]["pending"] == 0


# --- rate= ---------------------------------------------------------------------------------


def test_rate_paces_a_sink_across_relays(r: redis.Redis, redis_url: str) -> None:
    paced = "redis-stream:etb-test:paced?rate=20/s"
    settings = make_settings(redis_url, [paced, STREAM])
    relays = [Relay(r, settings, consumer="a"), Relay(r, settings, consumer="b")]
    for org in ("1001", "1002"):
        commit_events(r, org, 20)
    started = time.monotonic()
    for org in ("1001", "1002"):
        for org_id, sink_name in relays[0].notify(org):
            relays[1].deliver(org_id, sink_name)
    while r.xlen("etb-test:paced") < 40:
        assert time.monotonic() - started < 15, "paced delivery did not finish"
        for relay in relays:
            outcomes = [relay.deliver(o, s).outcome for o, s in relay.due()]
            assert set(outcomes) <= {outbox.PACED, outbox.CAUGHT_UP, outbox.BUSY}
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    # A burst of 20 (one second's worth), then 20 a second, shared by both orgs and relays.
    assert elapsed >= 0.9
    assert r.xlen("etb-test:events") == 40  # the unpaced sink is not held back
    assert len({e["id"] for e in stream_events(r, "etb-test:paced")}) == 40
