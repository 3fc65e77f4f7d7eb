"""Delivery end to end: real consumers of every sink, relay worker processes, crashes.

Events are committed to the outbox as the poller does; relays run as real
processes (``multiprocessing``, spawn) or in the test process; consumers are a
Redis consumer group, a real ``celery worker`` subprocess and a loopback HTTP
receiver that verifies signatures with the ``standardwebhooks`` package.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from etbridge import keys, outbox
from etbridge.outbox import Relay
from tests.support import celery_sink_app
from tests.support.delivery import (
    SECRET,
    commit,
    commit_events,
    drive,
    envelope,
    make_settings,
    relay_loop,
    wait_for,
)
from tests.support.fleet import celery_sink_worker, stop
from tests.support.receiver import Receiver, Reply
from tests.support.replies import group_read

STREAM = "redis-stream:etb-test:events"
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        yield receiver


class RelayProcesses:
    """Relay worker processes running due/deliver loops until stopped."""

    def __init__(self, redis_url: str, sinks: list[str], **overrides: Any) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.stop_key = f"etb-test:stop:{os.getpid()}:{time.monotonic_ns()}"
        self.claim_margin = float(overrides.pop("claim_margin", 1.0))
        self.args = (redis_url, sinks, self.stop_key, overrides, self.claim_margin)
        self.procs: list[Any] = []

    def start(self, count: int) -> RelayProcesses:
        for _ in range(count):
            proc = SPAWN.Process(target=relay_loop, args=self.args, daemon=True)
            proc.start()
            self.procs.append(proc)
        return self

    def stop(self) -> None:
        self.client.set(self.stop_key, "1")
        for proc in self.procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.client.close()


def per_org_first_arrivals(envelopes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Event ids per org in order of first arrival (later copies ignored)."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for env in envelopes:
        if env["id"] in seen:
            continue
        seen.add(env["id"])
        out.setdefault(env["orgid"], []).append(env["id"])
    return out


def commit_many(client: redis.Redis, orgs: list[str], per_org: int) -> list[dict[str, Any]]:
    committed: list[dict[str, Any]] = []
    for round_no in range(2):  # interleaved commits across orgs
        for org in orgs:
            committed += commit_events(client, org, per_org // 2, start=round_no * per_org)
    return committed


# --- each sink with a real consumer -------------------------------------------------


def test_redis_stream_sink_feeds_a_consumer_group(r: redis.Redis, redis_url: str) -> None:
    orgs = ["1001", "1002", "1003"]
    committed = commit_many(r, orgs, 100)
    relays = RelayProcesses(redis_url, [STREAM]).start(2)
    received: list[dict[str, Any]] = []
    try:
        r.xgroup_create("etb-test:events", "consumers", id="0", mkstream=True)
        deadline = time.monotonic() + 60
        while len(received) < len(committed):
            assert time.monotonic() < deadline, f"only {len(received)} events consumed"
            for entry_id, fields in group_read(
                r, "consumers", "c1", "etb-test:events", count=100, block=200
            ):
                received.append(json.loads(fields[b"event"]))
                r.xack("etb-test:events", "consumers", entry_id)
    finally:
        relays.stop()
    assert per_org_first_arrivals(received) == per_org_first_arrivals(committed)
    assert len(received) == len(committed)  # no crash here: each event exactly once


@pytest.mark.slow
def test_celery_sink_feeds_a_real_worker(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    queue = "etb-test-deliveries"
    settings = make_settings(redis_url, [f"celery://{queue}/{celery_sink_app.TASK}"])
    worker = celery_sink_worker(redis_url, redis_url, tmp_path / "celery.log", queue)
    relay = Relay(r, settings)
    try:
        committed = commit_many(r, ["1001", "1002"], 40)
        drive(
            relay,
            lambda: outbox.status(r, settings)["outbox"]["pending"] == 0,
            notify=["1001", "1002"],
        )

        def received() -> list[dict[str, Any]]:
            return [json.loads(x) for x in r.lrange(celery_sink_app.RECEIVED, 0, -1)]

        try:
            wait_for(lambda: len(received()) >= len(committed), timeout=90)
        except TimeoutError:
            pytest.fail(
                "celery worker did not record the events:\n"
                + (tmp_path / "celery.log").read_text()[-3000:]
            )
        assert per_org_first_arrivals(received()) == per_org_first_arrivals(committed)
        assert received()[0] == committed[0]  # the envelope arrives as the dict it was
    finally:
        relay.close()
        stop(worker)


# --- webhooks: failures, recovery, dead letters, crashes ---------------------------------


@pytest.mark.slow
def test_flaky_receiver_then_recovery_loses_nothing(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    # Enough attempts that the failures below never exhaust one event's schedule.
    schedule = [0, 0.05, 0.1, 0.2, 0.3, 0.5] + [0.5] * 10
    rx.reply_next(
        Reply.error(500),
        Reply.error(500),
        Reply.timeout(3.0),
        Reply.too_many(retry_after=1),
        Reply.error(502),
        Reply.unavailable(retry_after=1),
        Reply.timeout(3.0),
        Reply.error(500),
        Reply.error(404),
        Reply.error(500),
    )
    committed = commit_many(r, ["1001", "1002", "1003"], 20)
    for org in ("1001", "1002", "1003"):
        Relay(r, make_settings(redis_url, [rx.url])).notify(org)
    r.delete(keys.DEFAULT.relay_due)  # let the processes' own ticks (and sweep) find the work
    relays = RelayProcesses(
        redis_url, [rx.url], retry_schedule=schedule, webhook_timeout=1.0
    ).start(2)
    try:
        rx.wait_for(lambda: set(rx.delivered_ids()) >= {e["id"] for e in committed}, timeout=90)
    finally:
        relays.stop()
    assert all(a.verified for a in rx.arrivals)
    assert all(a.webhook_id == (a.envelope or {}).get("id") for a in rx.arrivals)
    delivered = [a.envelope or {} for a in rx.delivered()]
    assert per_org_first_arrivals(delivered) == per_org_first_arrivals(committed)
    settings = make_settings(redis_url, [rx.url])
    assert outbox.dlq_list(r, settings) == []
    assert outbox.status(r, settings)["outbox"]["pending"] == 0


def test_never_recovering_receiver_dead_letters_then_redeliver(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    settings = make_settings(redis_url, [rx.url], retry_schedule=[0, 0.2, 0.5])
    relay = Relay(r, settings)
    committed = commit_events(r, "1001", 3) + commit_events(r, "1002", 2)
    rx.reply_default(Reply.error(503))
    drive(
        relay,
        lambda: len(outbox.dlq_list(r, settings)) == len(committed),
        notify=["1001", "1002"],
    )
    assert len(rx.arrivals) == 3 * len(committed)  # three attempts each
    assert rx.delivered_ids() == []
    lines = [d.line() for d in outbox.dlq_list(r, settings)]
    assert sorted(line.split()[0] for line in lines) == sorted(e["id"] for e in committed)
    rx.reply_default(Reply.ok())
    assert outbox.dlq_redeliver(r, settings, None) == len(committed)
    delivered = [a.envelope or {} for a in rx.delivered()]
    assert per_org_first_arrivals(delivered) == per_org_first_arrivals(committed)
    assert outbox.status(r, settings)["outbox"]["dead_lettered"] == 0


def test_dead_webhook_does_not_hold_up_the_stream_sink(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    rx.reply_default(Reply.timeout(5.0))
    committed = commit_many(r, ["1001", "1002"], 50)
    relays = RelayProcesses(
        redis_url, [rx.url, STREAM], retry_schedule=[0, 5, 60], webhook_timeout=1.0
    ).start(2)
    try:
        wait_for(lambda: r.xlen("etb-test:events") >= len(committed), timeout=60)
    finally:
        relays.stop()
    assert rx.delivered_ids() == []
    settings = make_settings(redis_url, [rx.url, STREAM])
    state = outbox.status(r, settings)["sinks"]
    assert state[STREAM]["pending"] == 0
    assert state[rx.url]["pending"] == len(committed)


@pytest.mark.slow
def test_relay_killed_mid_delivery_is_reclaimed(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    webhook_timeout, margin = 2.0, 1.0
    committed = commit_events(r, "1001", 6)
    rx.reply_next(Reply.ok(), Reply.held())  # the second event's request hangs
    relays = RelayProcesses(
        redis_url, [rx.url], webhook_timeout=webhook_timeout, claim_margin=margin
    )
    settings = make_settings(redis_url, [rx.url], webhook_timeout=webhook_timeout)
    Relay(r, settings).notify("1001")
    r.zadd(keys.DEFAULT.relay_due, {outbox.due_member("1001", settings.sinks[0].name): 0})
    relays.start(1)
    proc = relays.procs[0]
    assert rx.in_flight.wait(60), "the relay process never reached the receiver"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    rx.release()  # the held request is answered (200) to a dead socket
    relays.stop()
    # Celery hands the task of a lost worker process back to the queue (acks_late,
    # reject_on_worker_lost): the partition is asked for again at once.
    r.zadd(keys.DEFAULT.relay_due, {outbox.due_member("1001", settings.sinks[0].name): 0})
    relay = Relay(r, settings, claim_margin=margin)
    drive(relay, lambda: set(rx.delivered_ids()) >= {e["id"] for e in committed}, timeout=60)
    ids = rx.delivered_ids()
    held = committed[1]["id"]
    assert ids.count(held) == 2  # processed by the receiver, unknown to the killed relay
    copies = [a for a in rx.arrivals if a.webhook_id == held]
    assert all(a.envelope and a.envelope["id"] == held for a in copies)
    # Re-sent only once the killed attempt was certainly over.
    assert copies[1].received_at - copies[0].received_at >= webhook_timeout + margin - 0.1
    assert per_org_first_arrivals([a.envelope or {} for a in rx.delivered()]) == (
        per_org_first_arrivals(committed)
    )
    assert outbox.status(r, settings)["outbox"]["pending"] == 0


# --- value filters -----------------------------------------------------------------------


def test_where_delivers_only_bookings_that_became_definite(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    hook = rx.url + "?where=data.changes.status.to:definite"
    guests = rx.url + "?where=data.after.attributes.guest_count:12|20&where=type!:com.x"
    settings = make_settings(redis_url, [hook, STREAM])
    relay = Relay(r, settings)
    became = [
        envelope("1001", "1", changes={"status": {"from": "tentative", "to": "definite"}}, seq=1),
        envelope("1002", "2", changes={"status": {"from": "prospect", "to": "definite"}}, seq=2),
    ]
    others = [
        envelope("1001", "1", changes={"status": {"from": "definite", "to": "cancelled"}}, seq=3),
        envelope("1001", "3", changes={"name": {"from": "a", "to": "b"}}, seq=4),
        envelope("1002", "4", "created", seq=5),
        envelope("1002", "4", "deleted", seq=6),
    ]
    commit(r, "1001", [became[0], others[0], others[1]])
    commit(r, "1002", [others[2], became[1], others[3]])
    drive(
        relay,
        lambda: outbox.status(r, settings)["outbox"]["pending"] == 0,
        notify=["1001", "1002"],
    )
    parsed = [
        from_http_event(HTTPMessage(headers={"content-type": a.content_type}, body=a.body))
        for a in rx.delivered()
    ]
    assert sorted(e.get_id() for e in parsed) == sorted(e["id"] for e in became)
    data = [e.get_data() for e in parsed]
    assert all(isinstance(d, dict) and d["changes"]["status"]["to"] == "definite" for d in data)
    assert {e.get_extension("orgid") for e in parsed} == {"1001", "1002"}
    # What the filter dropped counts as delivered: nothing is pending or retrying.
    facts = outbox.status(r, settings)["sinks"][settings.sinks[0].display]
    assert facts["pending"] == 0 and facts["retrying"] == 0
    assert r.xlen("etb-test:events") == 6  # the unfiltered sink got everything
    # Numbers compare as their JSON text, on a second sink (the same receiver).
    attrs = {"id": "5", "type": "bookings", "attributes": {"guest_count": 12}}
    counted = envelope("1001", "5", "created", seq=7)
    counted["data"]["after"] = attrs
    skipped = envelope("1001", "6", "created", seq=8)
    skipped["data"]["after"] = {**attrs, "attributes": {"guest_count": 13}}
    settings2 = make_settings(redis_url, [guests])
    relay2 = Relay(r, settings2)
    commit(r, "1001", [counted, skipped])
    drive(relay2, lambda: outbox.status(r, settings2)["outbox"]["pending"] == 0, notify=["1001"])
    relay.close()
    relay2.close()
    assert counted["id"] in rx.delivered_ids()
    assert skipped["id"] not in rx.delivered_ids()


# --- order=none and rate= with relay processes -----------------------------------------------


@pytest.mark.slow
def test_order_none_with_relay_processes_loses_nothing(
    r: redis.Redis, redis_url: str, rx: Receiver
) -> None:
    """Two relay processes, a receiver that refuses one event of each org for a while."""
    url = f"{rx.url}?order=none&retry=0;0.3;0.3;0.3;0.3;0.3;0.3;0.3;0.3;0.3&rate=200/s"
    committed = commit_many(r, ["1001", "1002", "1003"], 20)
    stuck = {committed[i]["id"] for i in (2, 12, 25)}
    for event_id in stuck:
        rx.reply_for(event_id, Reply.error(503))
    # No notify: the processes' first tick sweeps and finds the committed work.
    relays = RelayProcesses(redis_url, [url], webhook_timeout=1.0).start(2)
    try:
        others = {e["id"] for e in committed} - stuck
        rx.wait_for(lambda: set(rx.delivered_ids()) >= others, timeout=60)
        assert not stuck & set(rx.delivered_ids())  # refused so far, the others passed them
        for event_id in stuck:
            rx.reply_for(event_id, None)
        rx.wait_for(lambda: set(rx.delivered_ids()) >= stuck, timeout=60)
    finally:
        relays.stop()
    delivered = rx.delivered_ids()
    assert len(delivered) == len(committed)  # each exactly once: no crash here
    # Per org, the events that never failed kept their commit order.
    order = [a.envelope or {} for a in rx.delivered() if a.webhook_id not in stuck]
    expected = [e for e in committed if e["id"] not in stuck]
    assert per_org_first_arrivals(order) == per_org_first_arrivals(expected)
    settings = make_settings(redis_url, [url])
    assert outbox.dlq_list(r, settings) == []
    facts = outbox.status(r, settings)["outbox"]
    assert (facts["pending"], facts["retrying"]) == (0, 0)
