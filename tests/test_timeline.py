"""One booking's timeline (timeline.py) against a real Redis: its events, and per sink
whether each was delivered, is pending, was dead-lettered or filtered out.

The states come from what the real relay left in Redis (consumer groups, the
dead-letter stream, the attempt log), not from hand-written group records.
"""

from __future__ import annotations

import redis

from etbridge import outbox, timeline
from etbridge.outbox.relay import Relay
from tests.support import delivery
from tests.support.receiver import Receiver, Reply

ORG = "1001"
STREAM = "redis-stream:timeline:events"


def test_each_sink_state_of_each_event_of_one_booking(redis_url: str, r: redis.Redis) -> None:
    with Receiver(delivery.SECRET) as receiver:
        receiver.reply_default(Reply.error(500))
        only_deletions = f"{STREAM}?types=deleted"
        relayed = [STREAM, receiver.url, only_deletions]
        # One attempt, then the webhook's events go to the dead-letter stream.
        settings = delivery.make_settings(redis_url, relayed, retry_schedule=[0.0])
        created = delivery.envelope(ORG, "4711", "created")
        updated = delivery.envelope(ORG, "4711", "updated", seq=1)
        other = delivery.envelope(ORG, "4712", "created")
        delivery.commit(r, ORG, [created, updated, other])
        relay = Relay(r, settings)
        try:
            delivery.drive(relay, lambda: len(outbox.dlq_list(r, settings)) == 3, notify=[ORG])
        finally:
            relay.close()

    # A sink the relay never ran for has no consumer group yet: everything is pending.
    never = "redis-stream:timeline:later"
    seen = delivery.make_settings(redis_url, [*relayed, never], retry_schedule=[0.0])
    events = timeline.booking_timeline(r, seen, ORG, "4711")
    assert [(e.id, e.type) for e in events] == [
        (created["id"], "created"),
        (updated["id"], "updated"),
    ]  # 4712's event is not 4711's
    for event in events:
        states = [d.state for d in event.deliveries]
        assert states == [
            timeline.DELIVERED,
            timeline.DEAD_LETTERED,
            timeline.FILTERED,
            timeline.PENDING,
        ]
        stream, webhook, _filtered, _never = event.deliveries
        assert [a.status for a in stream.attempts] == ["accepted"]
        assert [a.ok for a in webhook.attempts] == [False]
        assert "HTTP 500" in webhook.attempts[0].status
    assert events[1].changes == updated["data"]["changes"]

    # Committed after the relay's last read: pending on the sink that delivered the others.
    later = delivery.envelope(ORG, "4711", "updated", seq=2)
    delivery.commit(r, ORG, [later])
    newest = timeline.booking_timeline(r, seen, ORG, "4711")[-1]
    assert newest.id == later["id"]
    assert newest.deliveries[0].state == timeline.PENDING
    assert timeline.booking_timeline(r, seen, ORG, "9999") == []
