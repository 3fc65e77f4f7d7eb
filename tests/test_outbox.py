"""The relay against a real Redis and a real loopback receiver: order, retries, DLQ, replay."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from etbridge import keys, outbox
from etbridge.outbox import (
    BUDGET,
    BUSY,
    CAUGHT_UP,
    DISABLED,
    RETRY,
    WAITING,
    Relay,
    attempts,
    next_delay,
    retry_schedule,
)
from etbridge.settings import parse_sink
from tests.support.delivery import (
    SECRET,
    commit,
    commit_events,
    drive,
    envelope,
    make_settings,
    stream_events,
)
from tests.support.receiver import Receiver, Reply
from tests.support.replies import group_read

STREAM = "redis-stream:etb-test:events"


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        yield receiver


def by_org(envelopes: list[dict[str, object]]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for env in envelopes:
        out.setdefault(str(env["orgid"]), []).append(env["id"])
    return out


def first_arrivals(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


# --- the schedule (pure) ---------------------------------------------------------------


def test_next_delay_follows_the_contract() -> None:
    schedule = [0, 5, 300]

    def no_jitter() -> float:
        return 0.0

    # After attempt n fails, attempt n+1 waits value n+1 ...
    assert next_delay(schedule, 1, rand=no_jitter) == 5
    assert next_delay(schedule, 2, rand=no_jitter) == 300
    # ... and the attempt that waited the last value is the last one.
    assert next_delay(schedule, 3) is None
    # Retry-After wins when longer, never when shorter.
    assert next_delay(schedule, 1, 60, rand=no_jitter) == 60
    assert next_delay(schedule, 2, 60, rand=no_jitter) == 300
    # Jitter only adds, at most 10 %.
    assert next_delay(schedule, 2, rand=lambda: 0.999) == pytest.approx(329.97)


def test_retry_schedule_override_per_sink(redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM, "http://127.0.0.1:9/h?retry=0;1;2.5"])
    assert retry_schedule(settings.sinks[0], settings) == (0.0, 0.2, 0.5)
    assert retry_schedule(settings.sinks[1], settings) == (0.0, 1.0, 2.5)
    assert retry_schedule(parse_sink("redis-stream:k?retry=3|4"), settings) == (3.0, 4.0)
    with pytest.raises(ValueError, match="retry= needs non-negative seconds"):
        retry_schedule(parse_sink("redis-stream:k?retry=-1"), settings)


# --- delivery ---------------------------------------------------------------------------


def test_each_org_arrives_in_commit_order(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM])
    relay = Relay(r, settings)
    committed = []
    for round_no in range(3):
        for org in ("1001", "1002", "1003"):
            committed += commit_events(r, org, 40, start=round_no * 40)
    drive(relay, lambda: r.xlen("etb-test:events") >= 360, notify=["1001", "1002", "1003"])
    got = stream_events(r, "etb-test:events")
    assert len(got) == 360
    assert by_org(got) == by_org(committed)
    state = outbox.status(r, settings)
    assert state["outbox"]["pending"] == 0
    assert state["sinks"][STREAM]["delivered"] == 360


def test_budget_stops_and_reschedules(r: redis.Redis, redis_url: str) -> None:
    relay = Relay(r, make_settings(redis_url, [STREAM]))
    commit_events(r, "1001", 30)
    sink_name = relay.settings.sinks[0].name
    result = relay.deliver("1001", sink_name, max_events=10)
    assert (result.outcome, result.delivered) == (BUDGET, 10)
    assert r.zscore(keys.DEFAULT.relay_due, outbox.due_member("1001", sink_name)) is not None
    assert relay.due() == [("1001", sink_name)]
    result = relay.deliver("1001", sink_name)
    assert (result.outcome, result.delivered) == (CAUGHT_UP, 20)
    assert r.zscore(keys.DEFAULT.relay_due, outbox.due_member("1001", sink_name)) is None


def test_filters_route_and_ack_what_they_drop(r: redis.Redis, redis_url: str) -> None:
    url = "redis-stream:etb-test:status?types=updated,created&fields=status&orgs=12"
    settings = make_settings(redis_url, [url, STREAM])
    relay = Relay(r, settings)
    org12 = [
        envelope("12", "1", "created"),
        envelope("12", "1", "updated", changes={"name": {"from": "a", "to": "b"}}),
        envelope("12", "1", "updated", changes={"status": {"from": "a", "to": "b"}}),
        envelope("12", "1", "deleted"),
    ]
    org34 = [envelope("34", "2", "updated", changes={"status": {"from": "a", "to": "b"}})]
    commit(r, "12", org12)
    commit(r, "34", org34)
    drive(relay, lambda: r.xlen("etb-test:events") == 5, notify=["12", "34"])
    drive(relay, lambda: outbox.status(r, settings)["outbox"]["pending"] == 0)
    routed = stream_events(r, "etb-test:status")
    assert [e["id"] for e in routed] == [org12[0]["id"], org12[2]["id"]]
    assert outbox.status(r, settings)["sinks"][settings.sinks[0].display]["pending"] == 0
    # Org 34 is not this sink's: no consumer group is even made for it.
    groups = {g["name"].decode() for g in r.xinfo_groups(keys.DEFAULT.outbox("34"))}
    assert outbox.group_name(settings.sinks[0].name) not in groups


def test_retry_holds_back_one_org_for_one_sink_only(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    settings = make_settings(redis_url, [STREAM, rx.url], retry_schedule=[0, 0.1, 0.1, 0.1, 60])
    relay = Relay(r, settings)
    a = commit_events(r, "1001", 5)
    b = commit_events(r, "1002", 5)
    rx.reply_for(a[0]["id"], Reply.error(503))
    drive(
        relay,
        lambda: len(rx.delivered_ids()) == 5 and r.xlen("etb-test:events") == 10,
        notify=["1001", "1002"],
    )
    # Org 1002 went through, the stream sink got everything; org 1001 waits at its head.
    assert rx.delivered_ids() == [e["id"] for e in b]
    state_key = keys.DEFAULT.relay_partition("1001", settings.sinks[1].name)
    drive(relay, lambda: r.hget(state_key, "attempts") == b"4")
    hook = outbox.status(r, settings)["sinks"][rx.url]
    assert hook["retrying"] == 1
    assert hook["pending"] == 5
    assert "HTTP 503" in hook["last_error"]
    assert outbox.status(r, settings)["sinks"][STREAM]["pending"] == 0
    # The receiver recovers; the retry (60 s away) is brought forward by hand.
    rx.reply_for(a[0]["id"], None)
    r.hset(keys.DEFAULT.relay_partition("1001", settings.sinks[1].name), "next_at", "0")
    r.zadd(keys.DEFAULT.relay_due, {outbox.due_member("1001", settings.sinks[1].name): 0})
    drive(relay, lambda: len(rx.delivered_ids()) == 10)
    assert by_org([x.envelope or {} for x in rx.delivered()]) == by_org(a + b)
    assert outbox.status(r, settings)["outbox"]["retrying"] == 0


def test_retry_after_is_honoured(r: redis.Redis, redis_url: str, rx: Receiver) -> None:
    settings = make_settings(redis_url, [rx.url], retry_schedule=[0, 0.1, 0.1])
    relay = Relay(r, settings)
    commit_events(r, "1001", 2)
    rx.reply_next(Reply.too_many(retry_after=5))
    before = time.time()
    result = relay.deliver("1001", settings.sinks[0].name)
    assert result.outcome == RETRY
    assert result.next_at is not None and result.next_at >= before + 5
    assert relay.due() == []  # not due before Retry-After has passed
    # Asked anyway (a stray task), deliver waits and does not send.
    again = relay.deliver("1001", settings.sinks[0].name)
    assert again.outcome == WAITING
    assert len(rx.arrivals) == 1
    assert relay.due(now=result.next_at + 0.01) == [("1001", settings.sinks[0].name)]


def test_dead_letter_then_redeliver(r: redis.Redis, redis_url: str, rx: Receiver) -> None:
    settings = make_settings(redis_url, [rx.url], retry_schedule=[0, 0.05, 0.05])
    relay = Relay(r, settings)
    events = commit_events(r, "1001", 4)
    doomed = events[1]["id"]
    rx.reply_for(doomed, Reply.error(500))
    drive(relay, lambda: len(rx.delivered_ids()) == 3, notify=["1001"])
    # The doomed event had its three attempts, then the partition moved on.
    assert [a.webhook_id for a in rx.arrivals].count(doomed) == 3
    assert rx.delivered_ids() == [events[0]["id"], events[2]["id"], events[3]["id"]]
    letters = outbox.dlq_list(r, settings)
    assert [d.event_id for d in letters] == [doomed]
    assert letters[0].line().startswith(doomed)
    assert outbox.dlq_lines(r, settings) == [letters[0].line()]
    assert letters[0].attempts == 3
    assert "HTTP 500" in letters[0].error
    assert outbox.status(r, settings)["outbox"]["dead_lettered"] == 1
    # Still failing: redelivery stops, the letter stays.
    assert outbox.dlq_redeliver(r, settings, [doomed]) == 0
    assert len(outbox.dlq_list(r, settings)) == 1
    rx.reply_for(doomed, None)
    assert outbox.dlq_redeliver(r, settings, ["unknown-id"]) == 0
    assert outbox.dlq_redeliver(r, settings, [doomed]) == 1
    assert rx.delivered_ids()[-1] == doomed
    # The attempt log has the three attempts, the failed and the good redelivery.

    logged = attempts.read(r, settings, "1001", doomed, [settings.sinks[0].name])
    tries = logged[settings.sinks[0].name]
    assert [(a.attempt, a.ok) for a in tries] == [
        (1, False),
        (2, False),
        (3, False),
        (4, False),
        (4, True),
    ]
    assert outbox.dlq_list(r, settings) == []
    assert outbox.status(r, settings)["outbox"]["dead_lettered"] == 0


def test_poison_entries_are_dead_lettered_at_once(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM])
    relay = Relay(r, settings)
    good = envelope("1001", "1")
    commit(r, "1001", [])
    r.xadd(keys.DEFAULT.outbox("1001"), {"event": b"{not json"})
    r.xadd(keys.DEFAULT.outbox("1001"), {"other": b"field"})
    commit(r, "1001", [good])
    result = relay.deliver("1001", settings.sinks[0].name)
    assert (result.outcome, result.delivered, result.dead_lettered) == (CAUGHT_UP, 1, 2)
    letters = outbox.dlq_list(r, settings)
    assert [d.attempts for d in letters] == [0, 0]
    assert all(d.event_id.startswith("?") for d in letters)
    assert stream_events(r, "etb-test:events") == [good]


def test_gone_disables_the_sink_until_enabled(r: redis.Redis, redis_url: str, rx: Receiver) -> None:
    settings = make_settings(redis_url, [STREAM, rx.url])
    relay = Relay(r, settings)
    hook = settings.sinks[1].name
    events = commit_events(r, "1001", 3)
    rx.reply_next(Reply.gone())
    drive(relay, lambda: r.xlen("etb-test:events") == 3, notify=["1001"])
    result = relay.deliver("1001", hook)
    assert result.outcome == DISABLED
    state = outbox.status(r, settings)["sinks"][rx.url]
    assert state["disabled"] is True
    assert "410" in state["disabled_reason"]
    assert state["pending"] == 3
    # No more requests, and the tick no longer schedules the sink.
    commit_events(r, "1001", 2, start=3)
    drive(relay, lambda: r.xlen("etb-test:events") == 5, notify=["1001"])
    assert len(rx.arrivals) == 1
    assert all(sink != hook for _org, sink in relay.due(now=time.time() + 3600))
    outbox.enable_sink(r, settings, rx.url)
    drive(relay, lambda: len(rx.delivered_ids()) == 5)
    assert rx.delivered_ids()[:3] == [e["id"] for e in events]
    assert outbox.status(r, settings)["sinks"][rx.url]["disabled"] is False


def test_replay_resends_with_the_same_ids(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM])
    relay = Relay(r, settings)
    old = commit_events(r, "1001", 3)
    time.sleep(0.01)  # a distinct commit millisecond for the cut-off below
    since = datetime.now(UTC)
    time.sleep(0.01)
    new_a = commit_events(r, "1001", 2, start=3)
    new_b = commit_events(r, "1002", 2)
    drive(relay, lambda: r.xlen("etb-test:events") == 7, notify=["1001", "1002"])
    target = parse_sink("redis-stream:etb-test:replayed")
    assert outbox.replay(r, settings, target, since) == 4
    assert by_org(stream_events(r, "etb-test:replayed")) == by_org(new_a + new_b)
    assert outbox.replay(r, settings, STREAM, since, org_id="1002") == 2
    assert [e["id"] for e in stream_events(r, "etb-test:events")[-2:]] == [e["id"] for e in new_b]
    assert old  # committed before `since`: not replayed


def test_one_relay_per_partition(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM])
    relay = Relay(r, settings)
    sink = settings.sinks[0].name
    commit_events(r, "1001", 3)
    r.set(keys.DEFAULT.relay_lock("1001", sink), "someone-else", px=5000)
    before = time.time()
    result = relay.deliver("1001", sink)
    assert result.outcome == BUSY
    assert r.xlen("etb-test:events") == 0
    score = r.zscore(keys.DEFAULT.relay_due, outbox.due_member("1001", sink))
    # Due when the lock expires, in case its holder died...
    assert score is not None and score >= before + 4
    # ...and a live holder finds the note to read once more before it lets go.
    assert r.exists(keys.DEFAULT.relay_lock("1001", sink) + ":again")
    assert relay.deliver("1001", "no-such-sink").outcome == outbox.UNKNOWN
    r.delete(keys.DEFAULT.relay_lock("1001", sink))
    assert relay.deliver("1001", sink).delivered == 3
    # A holder about to let go sees the note a busy task left, and reads again.
    holder = outbox._Partition(relay, "1001", settings.sinks[0])
    assert holder.acquire() == 0
    assert relay.deliver("1001", sink).outcome == BUSY
    assert holder.finish() == 0  # look again, lock kept
    assert holder.finish() == 1  # nothing new: released
    assert not r.exists(keys.DEFAULT.relay_lock("1001", sink))


def test_entries_of_a_dead_relay_are_reclaimed_after_the_timeout(
    r: redis.Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url, [STREAM], webhook_timeout=2.0)
    relay = Relay(r, settings, claim_margin=1.0)  # reclaim after 3 s idle
    sink = settings.sinks[0].name
    events = commit_events(r, "1001", 5)
    relay.deliver("1001", sink)  # creates the group, delivers all
    more = commit_events(r, "1001", 4, start=5)
    # A relay that read three entries and died before sending them.
    stream, group = keys.DEFAULT.outbox("1001"), outbox.group_name(sink)
    assert len(group_read(r, group, "dead-worker", stream, count=3)) == 3
    first = relay.deliver("1001", sink)
    assert first.outcome == WAITING  # they may still be in flight: not yet
    assert first.next_at is not None
    assert r.xlen("etb-test:events") == 5
    drive(relay, lambda: r.xlen("etb-test:events") == 9, timeout=15)
    assert [e["id"] for e in stream_events(r, "etb-test:events")] == [
        e["id"] for e in events + more
    ]
    assert r.xpending(stream, group)["pending"] == 0


def test_first_attempt_waits_the_first_value(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM], retry_schedule=[2.0, 0.1])
    relay = Relay(r, settings)
    commit_events(r, "1001", 2)
    result = relay.deliver("1001", settings.sinks[0].name)
    assert result.outcome == WAITING
    assert result.next_at is not None
    assert r.xlen("etb-test:events") == 0
    drive(relay, lambda: r.xlen("etb-test:events") == 2, timeout=15)


def test_notify_due_and_sweep(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, [STREAM, "redis-stream:etb-test:b?orgs=1002"])
    relay = Relay(r, settings)
    a, b = (s.name for s in settings.sinks)
    commit_events(r, "1001", 1)
    assert relay.notify("1001") == [("1001", a)]  # sink b takes org 1002 only
    assert relay.notify("1001") == []  # handed out already (a task is on its way)
    assert relay.due(now=time.time() + 1) == []
    # A lost task: the partition comes back when its lease ends.
    assert relay.due(now=time.time() + outbox.ENQUEUE_LEASE + 1) == [("1001", a)]
    r.delete(keys.DEFAULT.relay_due)
    # Committed without a notify (a poller that died): the sweep finds it, once.
    commit_events(r, "1002", 2)
    r.delete(keys.DEFAULT.relay_sweep)
    found = set(relay.due())
    assert found == {("1001", a), ("1002", a), ("1002", b)}
    assert relay.due() == []


def test_trim_keeps_what_a_sink_has_not_acked(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(
        redis_url, [STREAM, "redis-stream:etb-test:slow"], outbox_retention=60.0
    )
    relay = Relay(r, settings)
    fast, slow = (s.name for s in settings.sinks)
    old_ms = int((time.time() - 3600) * 1000)
    commit(r, "1001", [])
    for n in range(5):
        body = json.dumps(envelope("1001", "1", seq=n))
        r.xadd(keys.DEFAULT.outbox("1001"), {"event": body}, id=f"{old_ms}-{n}")
    commit_events(r, "1001", 3, start=5)
    relay.deliver("1001", fast)
    assert outbox.trim(r, settings) == 0  # the slow sink has no group yet: keep all
    relay.deliver("1001", slow, max_events=2)
    assert outbox.trim(r, settings) == 2  # old and acked by both sinks
    relay.deliver("1001", slow)
    assert outbox.trim(r, settings) == 3  # the rest of the old ones; the recent 3 stay
    assert r.xlen(keys.DEFAULT.outbox("1001")) == 3


def test_logs_and_status_keep_secrets(
    r: redis.Redis, redis_url: str, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = rx.url.replace("http://", "http://hookuser:hookpass-777@")
    settings = make_settings(redis_url, [url], retry_schedule=[0, 0.05])
    relay = Relay(r, settings)
    commit_events(r, "1001", 2)
    rx.reply_default(Reply.error(500))
    with caplog.at_level(logging.INFO, logger="etbridge.outbox"):
        drive(
            relay,
            lambda: outbox.status(r, settings)["outbox"]["dead_lettered"] >= 1,
            notify=["1001"],
        )
    state = outbox.status(r, settings)
    text = caplog.text + repr(state) + "".join(d.line() for d in outbox.dlq_list(r, settings))
    assert "hookpass-777" not in text
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text
    assert "hookuser:***@" in text
    assert "dead-lettered" in caplog.text and "delivery failed" in caplog.text
