"""Dead letters: the events a sink gave up on, one stream per sink (``etb:sink:SINK:dlq``).

Each entry keeps the event as committed, its org, the attempts and the last
error; ``etbridge dlq list`` prints them, ``dlq redeliver`` sends them again
with the same ids, ``dlq purge`` drops them. They are kept for
``ETBRIDGE_DLQ_RETENTION`` (30 days) up to ``ETBRIDGE_DLQ_MAXLEN`` per sink;
nothing leaves silently: expiry is logged, a letter pushed out by the cap is an
ERROR (Sentry) and counted, and ``status`` warns from :data:`WARN_FILL` of the cap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import redis

from etbridge.errors import EtbridgeError, FatalError
from etbridge.outbox.attempts import AttemptLog
from etbridge.outbox.sinkcache import SinkCache
from etbridge.outbox.sinkstate import is_disabled, record_error
from etbridge.outbox.streams import resolve_sink, text
from etbridge.settings import Settings, SinkSpec
from etbridge.sinks import OutboxEvent

if TYPE_CHECKING:
    import celery
    import requests

log = logging.getLogger("etbridge.outbox")

# status warns (and the fill gauge shows) from this fraction of the cap.
WARN_FILL: Final = 0.8


@dataclass(frozen=True)
class DeadLetter:
    """One event a sink gave up on, with its last error."""

    dlq_id: str
    sink_name: str
    sink: str  # display URL, password masked
    event_id: str
    org_id: str
    type: str
    entry_id: str
    attempts: int
    error: str
    failed_at: float
    body: bytes = field(repr=False)

    def line(self) -> str:
        """One line for ``etbridge dlq list``, starting with the event id."""
        when = datetime.fromtimestamp(self.failed_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"{self.event_id}  org={self.org_id} type={self.type} sink={self.sink} "
            f"attempts={self.attempts} failed_at={when} error={self.error}"
        )


def _dead_letter_from(sink: SinkSpec, dlq_id: str, fields: Mapping[Any, Any]) -> DeadLetter:
    values = {text(k): v for k, v in fields.items()}
    body = values.get("event", b"")
    return DeadLetter(
        dlq_id=dlq_id,
        sink_name=sink.name,
        sink=sink.display,
        event_id=text(values.get("event_id")),
        org_id=text(values.get("org_id")),
        type=text(values.get("type")),
        entry_id=text(values.get("entry_id")),
        attempts=int(text(values.get("attempts")) or 0),
        error=text(values.get("error")),
        failed_at=float(text(values.get("failed_at")) or 0),
        body=body if isinstance(body, bytes) else text(body).encode(),
    )


def add(
    client: redis.Redis,
    settings: Settings,
    spec: SinkSpec,
    org_id: str,
    event: OutboxEvent,
    attempts: int,
    error: str,
) -> None:
    """Write one dead letter (the caller acks the outbox entry after this)."""
    try:
        event_type = str(event.envelope.get("type", ""))
    except FatalError:
        event_type = ""
    stream = settings.keyspace.dead_letters(spec.name)
    client.xadd(
        stream,
        {
            "event_id": event.event_id,
            "org_id": org_id,
            "type": event_type,
            "entry_id": event.entry_id,
            "attempts": str(attempts),
            "error": error,
            "failed_at": repr(time.time()),
            "event": event.body,
        },
    )
    record_error(client, settings.keyspace, spec, error)
    if client.xlen(stream) > settings.dlq_maxlen:
        # Over the cap: the oldest go, loudly (an ERROR reaches Sentry; status counts them).
        dropped = int(client.xtrim(stream, maxlen=settings.dlq_maxlen, approximate=False))
        if dropped:
            client.hincrby(settings.keyspace.sink_state(spec.name), "dead_letters_dropped", dropped)
            log.error(
                "dead letters over ETBRIDGE_DLQ_MAXLEN dropped sink=%s count=%d cap=%d",
                spec.display,
                dropped,
                settings.dlq_maxlen,
            )
    log.warning(
        "dead-lettered org_id=%s sink=%s event=%s attempts=%d error=%s",
        org_id,
        spec.display,
        event.event_id,
        attempts,
        error,
    )


def dlq_list(client: redis.Redis, settings: Settings, sink: str | None = None) -> list[DeadLetter]:
    """The dead letters of every configured sink (or of one: name, URL or display URL)."""
    specs = [resolve_sink(settings, sink)] if sink else list(settings.sinks)
    out: list[DeadLetter] = []
    for spec in specs:
        for dlq_id, fields in client.xrange(settings.keyspace.dead_letters(spec.name)) or []:
            out.append(_dead_letter_from(spec, text(dlq_id), fields or {}))
    return out


def dlq_lines(client: redis.Redis, settings: Settings, sink: str | None = None) -> list[str]:
    """``etbridge dlq list``: one line per dead letter, starting with its event id."""
    return [letter.line() for letter in dlq_list(client, settings, sink)]


def dlq_redeliver(
    client: redis.Redis,
    settings: Settings,
    ids: Iterable[str] | None = None,
    *,
    sink: str | None = None,
    broker_app: celery.Celery | None = None,
    session: requests.Session | None = None,
) -> int:
    """Send dead letters again, keeping their ids; each accepted one leaves the DLQ.

    ``ids`` are event ids (``None``: all). Per sink, redelivery stops at the
    first failure (the receiver is still down; the rest stay dead-lettered).
    A disabled sink is skipped. Returns the number of events delivered.
    """
    wanted = None if ids is None else set(ids)
    delivered = 0
    targets = SinkCache(client, settings, broker_app=broker_app, session=session)
    attempt_log = AttemptLog(client, settings)  # redeliveries show in `etbridge events show`
    try:
        for letter_sink, letters in _group_by_sink(dlq_list(client, settings, sink)).items():
            spec = resolve_sink(settings, letter_sink)
            if is_disabled(client, settings.keyspace, spec.name):
                log.warning("dlq redeliver skipped disabled sink=%s", spec.display)
                continue
            target = targets.get(spec)
            for letter in letters:
                if wanted is not None and letter.event_id not in wanted:
                    continue
                event = OutboxEvent(letter.body, letter.entry_id)
                started = time.monotonic()
                try:
                    target.send(event, letter.attempts + 1)
                except EtbridgeError as exc:
                    status = f"{type(exc).__name__} {target.last_status or ''}".strip()
                    attempt_log.record(
                        letter.org_id,
                        spec.name,
                        [event],
                        letter.attempts + 1,
                        ok=False,
                        status=status,
                        seconds=time.monotonic() - started,
                        excerpt=target.last_excerpt if target.last_status else str(exc),
                    )
                    log.warning(
                        "dlq redeliver failed sink=%s event=%s error=%s",
                        spec.display,
                        letter.event_id,
                        exc,
                    )
                    break
                attempt_log.record(
                    letter.org_id,
                    spec.name,
                    [event],
                    letter.attempts + 1,
                    ok=True,
                    status=target.last_status or "accepted",
                    seconds=time.monotonic() - started,
                    excerpt=target.last_excerpt,
                )
                client.xdel(settings.keyspace.dead_letters(spec.name), letter.dlq_id)
                delivered += 1
                log.info("dlq redelivered sink=%s event=%s", spec.display, letter.event_id)
    finally:
        targets.close()
    return delivered


def _group_by_sink(letters: Iterable[DeadLetter]) -> dict[str, list[DeadLetter]]:
    out: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        out.setdefault(letter.sink_name, []).append(letter)
    return out


def purge(
    client: redis.Redis,
    settings: Settings,
    ids: Iterable[str] | None = None,
    *,
    before: datetime | None = None,
) -> int:
    """``etbridge dlq purge``: drop dead letters by event id, or those that failed before a time.

    Returns how many were dropped (each is logged).
    """
    removed = 0
    wanted = None if ids is None else set(ids)
    for spec in settings.sinks:
        stream = settings.keyspace.dead_letters(spec.name)
        if before is not None:
            if before.tzinfo is None:
                before = before.replace(tzinfo=UTC)
            cut = f"{int(before.timestamp() * 1000)}-0"
            count = int(client.xtrim(stream, minid=cut, approximate=False))
        else:
            doomed = [
                d.dlq_id
                for d in dlq_list(client, settings, spec.name)
                if wanted is not None and d.event_id in wanted
            ]
            count = int(client.xdel(stream, *doomed)) if doomed else 0
        if count:
            log.info("dead letters purged sink=%s count=%d", spec.display, count)
        removed += count
    return removed


def expire(client: redis.Redis, settings: Settings, *, now: float | None = None) -> int:
    """Retention: drop dead letters older than ``ETBRIDGE_DLQ_RETENTION`` (logged)."""
    now = time.time() if now is None else now
    cut = f"{int((now - settings.dlq_retention) * 1000)}-0"
    removed = 0
    for spec in settings.sinks:
        count = int(
            client.xtrim(settings.keyspace.dead_letters(spec.name), minid=cut, approximate=False)
        )
        if count:
            log.warning(
                "dead letters expired sink=%s count=%d (ETBRIDGE_DLQ_RETENTION)",
                spec.display,
                count,
            )
        removed += count
    return removed


def fill(settings: Settings, count: int) -> float:
    """The fraction of the dead-letter cap a sink uses."""
    return round(count / settings.dlq_maxlen, 4)
