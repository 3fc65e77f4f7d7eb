"""The sinks one by one: routing, signatures, status codes to errors, real Redis and broker."""

from __future__ import annotations

import base64
import json
import time
from email.utils import formatdate

import pytest
import redis
from standardwebhooks.webhooks import Webhook

from etbridge.errors import FatalError, RateLimited, ServerError, TransportError
from etbridge.events import validate_envelope
from etbridge.redisserver import free_port
from etbridge.settings import SinkFilter, parse_sink
from etbridge.sinks import (
    OutboxEvent,
    ReceiverRejected,
    SinkGone,
    event_op,
    make_sink,
    route,
)
from etbridge.sinks.celery_queue import CelerySink
from etbridge.sinks.redis_stream import RedisStreamSink
from etbridge.sinks.webhook import WebhookSink, parse_retry_after, raise_for_delivery
from tests.support.delivery import SECRET, envelope, make_settings
from tests.support.receiver import Receiver, Reply

# --- routing (pure) -----------------------------------------------------------------


def test_event_op() -> None:
    assert event_op("com.eventtemple.booking.created") == "created"
    assert event_op("com.eventtemple.booking.snapshot") == "snapshot"
    assert event_op("com.eventtemple.schema.changed") == "schema.changed"


def test_route_types_fields_orgs() -> None:
    status_change = envelope("12", "1", "updated", changes={"status": {"from": "a", "to": "b"}})
    name_change = envelope("12", "1", "updated", changes={"name": {"from": "a", "to": "b"}})
    created = envelope("12", "1", "created")
    deleted = envelope("12", "1", "deleted")
    other_org = envelope("99", "1", "updated")

    everything = SinkFilter()
    assert all(route(everything, e) for e in (status_change, name_change, created, deleted))

    # The example: new bookings and status changes, for orgs 12 and 34.
    flt = parse_sink("celery://q/t?types=updated&types=created&fields=status&orgs=12,34").filter
    assert route(flt, status_change)
    assert route(flt, created)
    assert not route(flt, name_change)
    assert not route(flt, deleted)
    assert not route(flt, other_org)

    # fields= alone filters updates only; other operations pass.
    fields_only = SinkFilter(fields=("status",))
    assert route(fields_only, status_change)
    assert not route(fields_only, name_change)
    assert route(fields_only, created)

    relationship = envelope(
        "12", "1", "updated", changes={"relationships.room": {"from": None, "to": None}}
    )
    assert route(SinkFilter(fields=("relationships.room",)), relationship)
    schema = {**created, "type": "com.eventtemple.schema.changed"}
    assert route(SinkFilter(types=("schema.changed",)), schema)
    assert not route(SinkFilter(types=("updated",)), schema)


def test_test_envelopes_follow_the_contract() -> None:
    for op in ("created", "updated", "deleted", "snapshot"):
        validate_envelope(envelope("1001", "7", op))


def test_outbox_event_parsing() -> None:
    env = envelope("1", "2")
    event = OutboxEvent.from_envelope(env, "1700000000123-0")
    assert event.event_id == env["id"]
    assert event.committed_at == pytest.approx(1700000000.123)
    assert json.loads(event.body) == env
    assert OutboxEvent(event.body).envelope == env
    bad = OutboxEvent(b"not json", "1-0")
    with pytest.raises(FatalError):
        _ = bad.envelope
    assert bad.event_id == "?1-0"
    with pytest.raises(FatalError):
        _ = OutboxEvent(b'{"no": "id"}', "1-1").envelope


# --- status codes (pure) -------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("nonsense") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("99999999") == 86400.0
    now = time.time()
    date = formatdate(now + 120, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(120, abs=1)


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (500, {}, ServerError, None),
        (502, {"Retry-After": "9"}, ServerError, None),  # only 503 and 429 carry it
        (503, {"Retry-After": "9"}, ServerError, 9.0),
        (429, {"Retry-After": "30"}, RateLimited, 30.0),
        (429, {}, RateLimited, None),
        (404, {}, ReceiverRejected, None),
        (301, {}, ReceiverRejected, None),
        (410, {}, SinkGone, None),
    ],
)
def test_raise_for_delivery(
    status: int, headers: dict[str, str], error: type[Exception], retry_after: float | None
) -> None:
    with pytest.raises(error) as info:
        raise_for_delivery(status, headers, "http://example.test/hook", "body")
    assert f"HTTP {status}" in str(info.value)
    assert getattr(info.value, "retry_after", None) == retry_after
    for ok in (200, 201, 204, 299):
        raise_for_delivery(ok, {}, "x")


# --- the Redis-stream sink ----------------------------------------------------------


def test_redis_stream_sink_batches_with_maxlen(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, ["redis-stream:etb-test:events"], stream_maxlen=1000)
    sink = make_sink(settings.sinks[0], settings, redis_client=r)
    assert isinstance(sink, RedisStreamSink)
    events = [OutboxEvent.from_envelope(envelope("1", str(n), seq=n)) for n in range(2500)]
    for offset in range(0, len(events), sink.max_batch):
        sink.send_many(events[offset : offset + sink.max_batch], 1)
    # MAXLEN ~ trims whole nodes only: at least maxlen kept, far fewer than sent.
    length = r.xlen("etb-test:events")
    assert 1000 <= length < 2500
    last = r.xrevrange("etb-test:events", count=1)[0][1][b"event"]
    assert last == events[-1].body


def test_redis_stream_sink_on_another_redis_db(r: redis.Redis, redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    url = f"redis-stream://127.0.0.1:{port}/3/elsewhere:events"
    settings = make_settings(redis_url, [url])
    sink = make_sink(settings.sinks[0], settings, redis_client=r)
    event = OutboxEvent.from_envelope(envelope("1", "2"))
    sink.send(event, 1)
    other = redis.Redis.from_url(f"redis://127.0.0.1:{port}/3")
    try:
        assert other.xlen("elsewhere:events") == 1
        assert r.xlen("elsewhere:events") == 0
    finally:
        sink.close()
        other.flushdb()
        other.close()


def test_redis_stream_sink_errors_are_retriable_and_masked(redis_url: str) -> None:
    url = f"redis-stream://:hunter2secret@127.0.0.1:{free_port()}/0/k"
    settings = make_settings(redis_url, [url], webhook_timeout=1.0)
    sink = make_sink(settings.sinks[0], settings)
    with pytest.raises(TransportError) as info:
        sink.send(OutboxEvent.from_envelope(envelope("1", "2")), 1)
    assert "hunter2secret" not in str(info.value)
    assert "***" in str(info.value)
    sink.close()


def test_redis_stream_sink_wrong_type_is_retriable(r: redis.Redis, redis_url: str) -> None:
    r.set("etb-test:not-a-stream", "x")
    settings = make_settings(redis_url, ["redis-stream:etb-test:not-a-stream"])
    sink = make_sink(settings.sinks[0], settings, redis_client=r)
    with pytest.raises(ServerError, match="WRONGTYPE"):
        sink.send(OutboxEvent.from_envelope(envelope("1", "2")), 1)


# --- the Celery sink ----------------------------------------------------------------


def test_celery_sink_publishes_json_task(r: redis.Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, ["celery://etb-test-q/etb_test.record"])
    sink = make_sink(settings.sinks[0], settings)
    assert isinstance(sink, CelerySink)
    env = envelope("1", "2")
    try:
        sink.send(OutboxEvent.from_envelope(env), 1)
    finally:
        sink.close()
    # kombu's Redis transport keeps a queue as a list named after it.
    raw = r.lpop("etb-test-q")
    assert raw is not None
    message = json.loads(raw)
    assert message["headers"]["task"] == "etb_test.record"
    assert message["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [env]
    assert kwargs == {}


def test_celery_sink_broker_down_is_retriable(redis_url: str) -> None:
    broker = f"redis://:brokerpass99@127.0.0.1:{free_port()}/0"
    settings = make_settings(redis_url, ["celery://q/t"], broker_url=broker, webhook_timeout=1.0)
    sink = make_sink(settings.sinks[0], settings)
    try:
        with pytest.raises(TransportError) as info:
            sink.send(OutboxEvent.from_envelope(envelope("1", "2")), 1)
    finally:
        sink.close()
    assert "brokerpass99" not in str(info.value)


# --- the webhook sink ---------------------------------------------------------------


@pytest.fixture
def receiver() -> Receiver:
    with Receiver(SECRET) as rx:
        yield rx


def _webhook(redis_url: str, url: str, **overrides: object) -> WebhookSink:
    settings = make_settings(redis_url, [url], **overrides)
    sink = make_sink(settings.sinks[0], settings)
    assert isinstance(sink, WebhookSink)
    return sink


def test_webhook_is_signed_per_standard_webhooks(redis_url: str, receiver: Receiver) -> None:
    sink = _webhook(redis_url, receiver.url)
    env = envelope("1001", "7")
    event = OutboxEvent.from_envelope(env, "1700000000000-0")
    before = int(time.time())
    sink.send(event, 1)
    sink.send(event, 2)
    sink.close()
    arrivals = receiver.arrivals
    assert len(arrivals) == 2
    for arrival in arrivals:
        assert arrival.verified  # the receiver checked it with the standardwebhooks package
        assert arrival.webhook_id == env["id"]
        assert arrival.content_type == "application/cloudevents+json"
        assert arrival.envelope == env
        assert arrival.body == event.body
        assert arrival.signature.startswith("v1,")
        assert before <= int(arrival.timestamp) <= int(time.time())
    # A receiver with another key refuses the same request.
    other = Webhook("whsec_" + base64.b64encode(b"another-key-entirely-000").decode())
    headers = {
        "webhook-id": arrivals[0].webhook_id,
        "webhook-timestamp": arrivals[0].timestamp,
        "webhook-signature": arrivals[0].signature,
    }
    with pytest.raises(Exception, match="signature"):
        other.verify(arrivals[0].body, headers)


def test_webhook_status_codes(redis_url: str, receiver: Receiver) -> None:
    sink = _webhook(redis_url, receiver.url)
    event = OutboxEvent.from_envelope(envelope("1", "2"))
    receiver.reply_next(
        Reply.error(500),
        Reply.too_many(retry_after=7),
        Reply.unavailable(retry_after=3),
        Reply.error(404),
        Reply.gone(),
    )
    with pytest.raises(ServerError):
        sink.send(event, 1)
    with pytest.raises(RateLimited) as limited:
        sink.send(event, 2)
    assert limited.value.retry_after == 7.0
    with pytest.raises(ServerError) as unavailable:
        sink.send(event, 3)
    assert unavailable.value.retry_after == 3.0
    with pytest.raises(ReceiverRejected):
        sink.send(event, 4)
    with pytest.raises(SinkGone):
        sink.send(event, 5)
    sink.send(event, 6)
    sink.close()


def test_webhook_timeout_and_refused(redis_url: str, receiver: Receiver) -> None:
    sink = _webhook(redis_url, receiver.url, webhook_timeout=0.5)
    receiver.reply_next(Reply.timeout(3.0))
    with pytest.raises(TransportError, match=r"within 0\.5s"):
        sink.send(OutboxEvent.from_envelope(envelope("1", "2")), 1)
    sink.close()
    refused = _webhook(redis_url, f"http://127.0.0.1:{free_port()}/hook")
    with pytest.raises(TransportError) as info:
        refused.send(OutboxEvent.from_envelope(envelope("1", "2")), 1)
    refused.close()
    # requests' own message (the URL, the pool, the errno) is replaced by ours.
    assert str(info.value).startswith("ConnectionError posting to http://127.0.0.1:")
    assert "HTTPConnectionPool" not in str(info.value)
    assert info.value.__suppress_context__


def test_webhook_errors_never_show_secrets(redis_url: str, receiver: Receiver) -> None:
    url = receiver.url.replace("http://", "http://user:pw-secret-123@") + "?retry=0;1"
    sink = _webhook(redis_url, url)
    assert "retry=" not in sink.url  # etbridge's own parameter is not sent to the receiver
    receiver.reply_next(Reply.error(500))
    with pytest.raises(ServerError) as info:
        sink.send(OutboxEvent.from_envelope(envelope("1", "2")), 1)
    sink.close()
    text = str(info.value) + repr(sink)
    assert "pw-secret-123" not in text
    assert SECRET not in text
    assert SECRET.removeprefix("whsec_") not in text


def test_webhook_without_secret_is_refused(redis_url: str) -> None:
    settings = make_settings(redis_url, ["redis-stream:x"], webhook_secret=None)
    with pytest.raises(FatalError, match="WEBHOOK_SECRET"):
        make_sink(parse_sink("http://127.0.0.1:9/hook"), settings)
