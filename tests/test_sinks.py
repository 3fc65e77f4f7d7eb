"""The sinks one by one: routing, signatures, status codes to errors, real Redis and broker."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import cast

import pytest
import redis
from standardwebhooks.webhooks import Webhook

from etbridge import logs
from etbridge.errors import FatalError, RateLimited, ServerError, TransportError
from etbridge.events import validate_envelope
from etbridge.redisserver import free_port
from etbridge.settings import SettingsError, SinkFilter, load_settings, parse_sink
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
from tests.support.replies import StreamEntry

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
    last = cast(list[StreamEntry], r.xrevrange("etb-test:events", count=1))[0][1][b"event"]
    assert last == events[-1].body


def test_redis_stream_sink_on_another_redis_db(r: redis.Redis, redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
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
    message = json.loads(cast(bytes, raw))
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
def receiver() -> Iterator[Receiver]:
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


# --- several secrets (CONTRACT.md "Additions") ------------------------------------------

KEY_B = "whsec_" + base64.b64encode(b"etbridge-test-second-key-4567").decode()
KEY_NAMED = "whsec_" + base64.b64encode(b"etbridge-test-named-key-89ab").decode()
# The Standard Webhooks specification's own example (its README and test suites).
SPEC_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(arrival: object) -> dict[str, str]:
    return {
        "webhook-id": arrival.webhook_id,  # type: ignore[attr-defined]
        "webhook-timestamp": arrival.timestamp,  # type: ignore[attr-defined]
        "webhook-signature": arrival.signature,  # type: ignore[attr-defined]
    }


def test_several_keys_sign_once_each(redis_url: str, receiver: Receiver) -> None:
    sink = _webhook(redis_url, receiver.url, webhook_secret=f"{SECRET}  {KEY_B}")
    env = envelope("1001", "7")
    sink.send(OutboxEvent.from_envelope(env, "1700000000000-0"), 1)
    sink.close()
    (arrival,) = receiver.arrivals
    assert arrival.verified  # the receiver knows the first key only
    signatures = arrival.signature.split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    # The official verifier, with each key alone: both verify the same request.
    for key in (SECRET, KEY_B):
        assert Webhook(key).verify(arrival.body, _headers(arrival)) == env
    with pytest.raises(Exception, match="signature"):
        Webhook(KEY_NAMED).verify(arrival.body, _headers(arrival))


def test_signatures_match_the_specification_vector(redis_url: str) -> None:
    sink = _webhook(redis_url, "http://127.0.0.1:9/hook", webhook_secret=f"{SPEC_KEY} {KEY_B}")
    event = OutboxEvent(SPEC_BODY, "1614265330000-0", envelope={"id": SPEC_ID})
    headers = sink.headers(event, SPEC_TIMESTAMP)
    sink.close()
    assert headers["webhook-id"] == SPEC_ID
    assert headers["webhook-timestamp"] == str(SPEC_TIMESTAMP)
    first, second = headers["webhook-signature"].split(" ")
    assert first == SPEC_SIGNATURE  # byte for byte what the specification says
    assert second != SPEC_SIGNATURE and second.startswith("v1,")


def test_a_sink_names_its_own_secret(
    redis_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_PARTNER", f"{KEY_NAMED} {KEY_B}")
    with Receiver(KEY_NAMED) as partner:
        settings = make_settings(redis_url, [receiver.url, partner.url + "?secret=partner"])
        default_sink, named_sink = (make_sink(s, settings) for s in settings.sinks)
        assert isinstance(named_sink, WebhookSink)
        assert "secret" not in named_sink.url  # etbridge's own parameter stays home
        event = OutboxEvent.from_envelope(envelope("1001", "7"), "1700000000000-0")
        default_sink.send(event, 1)
        named_sink.send(event, 1)
        default_sink.close()
        named_sink.close()
        (mine,) = receiver.arrivals
        (theirs,) = partner.arrivals
    assert mine.verified and theirs.verified
    assert len(theirs.signature.split(" ")) == 2
    Webhook(KEY_B).verify(theirs.body, _headers(theirs))
    # Two receivers never share a key: neither verifies the other's request.
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(theirs.body, _headers(theirs))
    with pytest.raises(Exception, match="signature"):
        Webhook(KEY_NAMED).verify(mine.body, _headers(mine))
    assert "***" in settings.sinks[1].display  # status shows secret=***, never a key


@pytest.mark.parametrize(
    ("secret", "named", "message"),
    [
        (f"{SECRET} nope", None, "ETBRIDGE_WEBHOOK_SECRET: key 2 of 2 is not a whsec_"),
        ("whsec_!!!notbase64", None, "ETBRIDGE_WEBHOOK_SECRET: the key is not whsec_ followed"),
        (SECRET, None, "ETBRIDGE_WEBHOOK_SECRET_PARTNER: is required but not set"),
        (SECRET, f"{KEY_B} sk_live_other", "ETBRIDGE_WEBHOOK_SECRET_PARTNER: key 2 of 2"),
    ],
)
def test_bad_secrets_are_one_line_setting_errors(
    monkeypatch: pytest.MonkeyPatch, secret: str, named: str | None, message: str
) -> None:
    monkeypatch.chdir("/")  # no .env file
    monkeypatch.delenv("ETBRIDGE_WEBHOOK_SECRET_PARTNER", raising=False)
    if named is not None:
        monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_PARTNER", named)
    with pytest.raises(SettingsError) as info:
        load_settings(
            client_id="c",
            client_secret="s",
            sinks="http://127.0.0.1:9/a,http://127.0.0.1:9/b?secret=partner",
            webhook_secret=secret,
        )
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    for value in (secret, *(secret.split()), named or "-", *((named or "-").split())):
        assert value not in text.replace("ETBRIDGE_WEBHOOK_SECRET", "")


def test_every_key_is_scrubbed_from_logs(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETBRIDGE_WEBHOOK_SECRET_PARTNER", KEY_NAMED)
    sink = _webhook(redis_url, "http://127.0.0.1:9/hook?secret=partner")
    sink.close()
    line = logs.scrub(f"oops {KEY_NAMED} and {KEY_NAMED.removeprefix('whsec_')}")
    assert KEY_NAMED.removeprefix("whsec_") not in line
