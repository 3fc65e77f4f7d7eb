"""Timed sends: published once each, at their time, by whichever beat pops them first."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from etbridge import keys, sender


def test_due_sends_are_popped_once_in_time_order(r: redis.Redis) -> None:
    now = time.time()
    sender.schedule(r, keys.DEFAULT, [(now + 5, {"org_id": "2"}), (now - 1, {"org_id": "1"})])
    assert sender.pop_due(r, keys.DEFAULT, now) == [(now - 1, {"org_id": "1"})]
    assert sender.pop_due(r, keys.DEFAULT, now) == []  # gone: a second beat gets nothing
    assert sender.next_due(r, keys.DEFAULT) == now + 5
    assert [p for _, p in sender.pop_due(r, keys.DEFAULT, now + 6)] == [{"org_id": "2"}]
    assert r.zcard(keys.DEFAULT.plan_sends) == 0


def test_the_sender_publishes_at_the_send_time_and_drops_stale_sends(r: redis.Redis) -> None:
    sent: list[tuple[float, dict[str, Any]]] = []
    done = threading.Event()

    def publish(payload: dict[str, Any]) -> None:
        sent.append((time.time(), payload))
        if payload["org_id"] == "late":
            done.set()

    now = time.time()
    sender.schedule(
        r,
        keys.DEFAULT,
        [
            (now - sender.STALE - 1, {"org_id": "stale"}),
            (now + 0.3, {"org_id": "soon"}),
            (now + 0.6, {"org_id": "late"}),
        ],
    )
    thread = sender.Sender(r, keys.DEFAULT, publish)
    thread.start()
    try:
        assert done.wait(5), sent
    finally:
        thread.stop()
    assert [p["org_id"] for _, p in sent] == ["soon", "late"]
    assert sent[0][0] >= now + 0.3 - 0.01
    assert sent[1][0] - (now + 0.6) < 0.2  # published within the sender's idle step
