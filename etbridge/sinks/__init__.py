"""Sinks: where change events go. A sink accepts events or raises what the relay
(:mod:`etbridge.outbox`) should do next::

    EtbridgeError
    ├── RetriableError            try again on the retry schedule
    │   ├── RateLimited           429 (retry_after = Retry-After, if given)
    │   ├── ServerError           5xx (503 may carry Retry-After), Redis error replies
    │   ├── TransportError        timeouts, refused or reset connections
    │   └── ReceiverRejected      any other non-2xx: a receiver's fix (a deploy, a
    │                             rotated key) makes the same event succeed later
    └── FatalError                the event can never be delivered: dead-letter it now
        └── SinkGone              410 Gone: the receiver is gone for good; disable the sink

One module per kind (:mod:`.redis_stream`, :mod:`.celery_queue`, :mod:`.webhook`);
:func:`make_sink`, the routing filter :func:`route` and :class:`OutboxEvent` live here.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from etbridge.errors import FatalError, RetriableError
from etbridge.settings import SinkFilter, SinkSpec

if TYPE_CHECKING:
    import celery
    import redis
    import requests

    from etbridge.settings import Settings

__all__ = [
    "OutboxEvent",
    "ReceiverRejected",
    "Sink",
    "SinkGone",
    "event_op",
    "make_sink",
    "route",
]

EVENT_TYPE_PREFIX = "com.eventtemple."


class ReceiverRejected(RetriableError):
    """The receiver answered a non-2xx status other than 410, 429 and 5xx.

    Retried like any failure (the Standard Webhooks practice): a receiver that
    refuses a signature today may have its key rotated back tomorrow; the
    retry schedule ends in the dead-letter stream either way.
    """

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class SinkGone(FatalError):
    """The receiver answered ``410 Gone``: stop delivering to this sink until re-enabled."""


class OutboxEvent:
    """One event as it travels from the outbox to a sink.

    ``body`` is the envelope JSON exactly as committed (webhooks sign and send
    these bytes; the Redis-stream sink copies them). ``envelope`` parses it on
    first use, so a sink without a filter never pays for JSON decoding.
    """

    __slots__ = ("_envelope", "body", "entry_id")

    def __init__(
        self, body: bytes, entry_id: str = "", envelope: Mapping[str, Any] | None = None
    ) -> None:
        self.body = body
        self.entry_id = entry_id
        self._envelope: dict[str, Any] | None = dict(envelope) if envelope is not None else None

    @classmethod
    def from_envelope(cls, envelope: Mapping[str, Any], entry_id: str = "") -> OutboxEvent:
        """Serialize an envelope the way the outbox stores it (compact JSON, UTF-8)."""
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(body, entry_id, envelope)

    @property
    def envelope(self) -> dict[str, Any]:
        """The CloudEvents envelope; :class:`FatalError` when the body is not one."""
        if self._envelope is None:
            try:
                value = json.loads(self.body)
            except (ValueError, UnicodeDecodeError):
                raise FatalError(f"outbox entry {self.entry_id}: body is not JSON") from None
            if not isinstance(value, dict) or not isinstance(value.get("id"), str):
                raise FatalError(f"outbox entry {self.entry_id}: not an event envelope")
            self._envelope = value
        return self._envelope

    @property
    def event_id(self) -> str:
        """The event's stable ``id`` (``?<entry id>`` for a malformed entry)."""
        try:
            return str(self.envelope["id"])
        except FatalError:
            return f"?{self.entry_id}"

    @property
    def committed_at(self) -> float:
        """Commit time (epoch seconds) from the outbox entry id; 0 when unknown."""
        millis, _, _ = self.entry_id.partition("-")
        return int(millis) / 1000.0 if millis.isdigit() else 0.0

    def __repr__(self) -> str:
        return f"OutboxEvent(entry_id={self.entry_id!r}, bytes={len(self.body)})"


def event_op(event_type: str) -> str:
    """The operation a routing filter's ``types=`` names, from a CloudEvents ``type``.

    >>> event_op("com.eventtemple.booking.updated")
    'updated'
    >>> event_op("com.eventtemple.schema.changed")
    'schema.changed'
    """
    rest = event_type.removeprefix(EVENT_TYPE_PREFIX)
    if rest.startswith("schema."):
        return rest
    return rest.rpartition(".")[2]


def route(flt: SinkFilter, envelope: Mapping[str, Any]) -> bool:
    """Whether a sink with this filter wants the event.

    - ``orgs``: the event's ``orgid`` is one of them.
    - ``types``: the operation (``created``, ``updated``, ``deleted``,
      ``snapshot``, ``schema.changed``) is one of them.
    - ``fields``: applies to ``updated`` events only, which pass when
      ``data.changes`` names one of the fields (``status``,
      ``relationships.room``). Other operations are decided by ``types``
      alone, so ``?types=created,updated&fields=status`` means "new bookings
      and status changes". An event that matches nothing is acked unsent.
    - ``where``: every value clause holds (:mod:`etbridge.where`).
    """
    if flt.is_empty:
        return True
    found = _COMPILED.get(id(flt))
    if found is None or found[0] is not flt:
        found = _COMPILED[id(flt)] = (flt, _compile(flt))
    return found[1](envelope)


# Compiled filters by the filter object's id (hashing a filter costs more than
# checking it); the filter is kept alongside, so an id is never reused under us.
_COMPILED: dict[int, tuple[SinkFilter, Callable[[Mapping[str, Any]], bool]]] = {}


def _compile(flt: SinkFilter) -> Callable[[Mapping[str, Any]], bool]:
    """The filter as one closure over frozensets (it runs for every event of the sink)."""
    orgs = frozenset(flt.orgs)
    types = frozenset(flt.types)
    fields = flt.fields
    where = [clause.predicate() for clause in flt.where]

    def check(envelope: Mapping[str, Any]) -> bool:
        if orgs and str(envelope.get("orgid", "")) not in orgs:
            return False
        if types or fields:
            op = event_op(str(envelope.get("type", "")))
            if types and op not in types:
                return False
            if fields and op == "updated":
                data = envelope.get("data")
                changes = data.get("changes") if isinstance(data, dict) else None
                if not isinstance(changes, dict) or not any(n in changes for n in fields):
                    return False
        return all(holds(envelope) for holds in where)

    return check


class Sink(abc.ABC):
    """A destination for events. Implementations raise the errors drawn above.

    ``max_batch`` is how many events :meth:`send_many` takes at once; the
    relay sends one event per call when it is 1. ``attempt_timeout`` bounds
    one call (the relay's reclaim timeout is longer than it). A sink that
    hears an answer sets ``last_status`` and ``last_excerpt`` (the attempt log).
    """

    max_batch: int = 1

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        # The receiver's answer to the last call, for the attempt log: a status
        # ("HTTP 200") and a short excerpt of the body; None when it gives none.
        self.last_status: str | None = None
        self.last_excerpt = ""

    @abc.abstractmethod
    def send(self, event: OutboxEvent, attempt_no: int) -> None:
        """Deliver one event; return only when the sink accepted it."""

    def send_many(self, events: Sequence[OutboxEvent], attempt_no: int) -> None:
        """Deliver events in order; on an error, none of them counts as delivered.

        ``attempt_no`` is the attempt number of the first event (the others
        are on their first attempt). The default sends one by one.
        """
        for index, event in enumerate(events):
            self.send(event, attempt_no if index == 0 else 1)

    def close(self) -> None:  # noqa: B027 - optional hook, most sinks own nothing
        """Release connections the sink opened itself."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.display!r})"


def make_sink(
    spec: SinkSpec,
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    broker_app: celery.Celery | None = None,
    session: requests.Session | None = None,
) -> Sink:
    """Build the sink a spec names.

    ``redis_client`` serves ``redis-stream:KEY`` (the etbridge Redis);
    ``broker_app`` is reused for ``celery://`` sinks (else one is made on
    ``settings.broker_url``); ``session`` is reused for webhooks.
    """
    if spec.kind == "redis-stream":
        from etbridge.sinks.redis_stream import RedisStreamSink

        return RedisStreamSink(spec, settings, client=redis_client)
    if spec.kind == "celery":
        from etbridge.sinks.celery_queue import CelerySink

        return CelerySink(spec, settings, app=broker_app)
    from etbridge.sinks.webhook import WebhookSink

    return WebhookSink(spec, settings, session=session)
