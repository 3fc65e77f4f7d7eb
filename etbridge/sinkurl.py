"""Sink URLs of ``ETBRIDGE_SINKS``: parsed once into typed :class:`SinkSpec` objects.

Routing filters (``types=``, ``fields=``, ``orgs=``, ``where=``) and delivery
options (``retry=``, ``rate=``, ``order=``, ``secret=``, ``disable_after=``) come
out of the query here, so a malformed one stops the process at start. Pure:
no environment, no I/O (secrets named by ``secret=`` are resolved in
:mod:`etbridge.settings`). Re-exported by :mod:`etbridge.settings`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from etbridge.where import Where, parse_all

EVENT_OPS = ("created", "updated", "deleted", "snapshot")
# A sink whose every attempt failed this long is disabled (Svix's 5 days).
DEFAULT_DISABLE_AFTER = 5 * 86400.0


@dataclass(frozen=True)
class SinkFilter:
    """Routing filter from a sink URL's query: ``?types=updated&fields=status&orgs=12,34``.

    Empty tuples mean "everything". ``types`` holds operation names
    (``created``, ``updated``, ``deleted``, ``snapshot``, ``schema.changed``).
    """

    types: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    orgs: tuple[str, ...] = ()
    where: tuple[Where, ...] = ()  # value filters, see etbridge.where

    @property
    def is_empty(self) -> bool:
        return not (self.types or self.fields or self.orgs or self.where)


@dataclass(frozen=True)
class SinkSpec:
    """A parsed sink URL.

    ``kind`` is ``redis-stream``, ``celery`` or ``webhook``. ``url`` is the URL
    as configured (it may hold a password: never log it, use ``display``).
    """

    kind: Literal["redis-stream", "celery", "webhook"]
    url: str
    # redis-stream: the stream key and, for another Redis, its connection URL.
    key: str = ""
    redis_url: str | None = None
    # celery
    queue: str = ""
    task: str = ""
    # webhook: the URL that is POSTed to (etbridge's own parameters removed).
    target: str = ""
    filter: SinkFilter = field(default_factory=SinkFilter)
    # Delivery options from the URL's query, parsed once (see SINK_OPTIONS).
    retry: tuple[float, ...] = ()  # empty: ETBRIDGE_RETRY_SCHEDULE
    rate: float | None = None  # events per second, fleet-wide; None: unlimited
    order: Literal["strict", "none"] = "strict"
    secret: str | None = None  # NAME of ETBRIDGE_WEBHOOK_SECRET_<NAME>; None: the default key
    disable_after: float | None = DEFAULT_DISABLE_AFTER  # None: never disabled by failures

    @property
    def name(self) -> str:
        """A stable, secret-free identifier (consumer group names, Redis keys, metrics).

        Tuning a sink (``rate=``, ``order=``, ``secret=``, ``disable_after=``)
        keeps its name, so it keeps its place in the outbox instead of
        receiving the retained history again as a new sink would.
        """
        return hashlib.sha256(_identity(self.url).encode()).hexdigest()[:12]

    @property
    def display(self) -> str:
        """The URL with any password masked, for logs and ``status``."""
        return mask_url(self.url)


# Options that tune delivery without changing what a sink receives (not in its name).
_TUNING_KEYS = ("rate", "order", "secret", "disable_after")


def _identity(url: str) -> str:
    """The URL without its tuning options (textually: the rest stays as written)."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    kept = [p for p in query.split("&") if p.split("=", 1)[0] not in _TUNING_KEYS]
    return head + ("?" + "&".join(kept) if kept else "")


_FILTER_KEYS = ("types", "fields", "orgs")
# Query parameters that configure etbridge, not the receiver (README: "Sink options").
SINK_OPTIONS = (*_FILTER_KEYS, "where", "retry", "rate", "order", "secret", "disable_after")


_SECRET_PARAM = re.compile(r"(token|secret|key|sig|signature|pass|auth|code)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with its password and secret-looking query values replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{netloc}"
    query = parts.query
    if query:
        pairs = parse_qs(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, vs in pairs.items() for v in vs],
            safe="*,",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_SCHEDULE_SEPARATORS = re.compile(r"[,;|\s]+")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min))?\s*$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``12h`` or ``5d``; ``ValueError`` otherwise.

    >>> parse_duration("5d")
    432000.0
    """
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"expected a duration like 90s, 30m, 12h or 5d, got {text!r}")
    return float(found.group(1)) * _DURATION_UNITS[found.group(2)]


@dataclass(frozen=True)
class _Options:
    filter: SinkFilter
    retry: tuple[float, ...]
    rate: float | None
    order: Literal["strict", "none"]
    secret: str | None
    disable_after: float | None


def _last(params: dict[str, list[str]], key: str) -> str | None:
    values = params.pop(key, [])
    return values[-1] if values else None


def _retry_option(raw: str | None) -> tuple[float, ...]:
    """``retry=0;5;300``: the sink's own retry schedule (``()``: the fleet's)."""
    if raw is None:
        return ()
    try:
        retry = tuple(float(p) for p in _SCHEDULE_SEPARATORS.split(raw) if p)
    except ValueError:
        retry = (-1.0,)
    if not retry or any(v < 0 or math.isnan(v) for v in retry):
        raise ValueError("retry= needs non-negative seconds separated by ; (e.g. 0;5;300)")
    return retry


def _rate_option(raw: str | None) -> float | None:
    """``rate=5/s`` or ``rate=120/m`` as events per second (``None``: unlimited)."""
    if raw is None:
        return None
    found = _RATE.match(raw)
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"rate={raw!r}: expected events per second, e.g. 5/s or 120/m")
    per = 60.0 if found.group(2) in ("m", "min") else 1.0
    return float(found.group(1)) / per


def _disable_after_option(raw: str | None) -> float | None:
    """``disable_after=3d`` in seconds; ``never``/``0``: ``None`` (never disabled)."""
    if raw is None:
        return DEFAULT_DISABLE_AFTER
    if raw.strip() in ("never", "0"):
        return None
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"disable_after=: {exc}") from None


def _split_options(query: str) -> tuple[_Options, str]:
    """Take etbridge's own parameters out of a query string; return them typed, and the rest.

    Raises ``ValueError`` naming the parameter (never its URL's secrets).
    """
    params = parse_qs(query, keep_blank_values=True)
    values: dict[str, tuple[str, ...]] = {}
    for key in _FILTER_KEYS:
        raw = params.pop(key, [])
        values[key] = tuple(v.strip() for item in raw for v in item.split(",") if v.strip())
    for op in values["types"]:
        if op not in (*EVENT_OPS, "schema.changed"):
            raise ValueError(f"unknown event type {op!r} in types= filter")
    where = parse_all(params.pop("where", []))
    retry = _retry_option(_last(params, "retry"))
    rate = _rate_option(_last(params, "rate"))
    raw_order = _last(params, "order")
    if raw_order not in (None, "strict", "none"):
        raise ValueError(f"order={raw_order!r}: expected strict or none")
    order: Literal["strict", "none"] = "none" if raw_order == "none" else "strict"
    secret = _last(params, "secret")
    if secret is not None and not _SECRET_NAME.match(secret):
        raise ValueError("secret= expects a NAME of letters, digits and _")
    disable_after = _disable_after_option(_last(params, "disable_after"))
    rest = urlencode([(k, v) for k, vs in params.items() for v in vs])
    options = _Options(
        filter=SinkFilter(where=where, **values),
        retry=retry,
        rate=rate,
        order=order,
        secret=secret.upper() if secret else None,
        disable_after=disable_after,
    )
    return options, rest


def _spec(
    kind: Literal["redis-stream", "celery", "webhook"], url: str, query: str, **kw: Any
) -> SinkSpec:
    try:
        opts, rest = _split_options(query)
    except ValueError as exc:
        raise ValueError(f"sink {mask_url(url)!r}: {exc}") from None
    if opts.secret and kind != "webhook":
        raise ValueError(f"sink {mask_url(url)!r}: secret= applies to http(s) sinks only")
    if kind == "webhook":
        parts = urlsplit(url)
        kw["target"] = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", rest, ""))
    return SinkSpec(
        kind=kind,
        url=url,
        filter=opts.filter,
        retry=opts.retry,
        rate=opts.rate,
        order=opts.order,
        secret=opts.secret,
        disable_after=opts.disable_after,
        **kw,
    )


def parse_sink(url: str) -> SinkSpec:
    """Parse one sink URL of the contract into a :class:`SinkSpec`.

    >>> parse_sink("redis-stream:etbridge:events").key
    'etbridge:events'
    """
    url = url.strip()
    if url.startswith("redis-stream:") and not url.startswith("redis-stream://"):
        rest = url[len("redis-stream:") :]
        key, _, query = rest.partition("?")
        if not key:
            raise ValueError(f"sink {mask_url(url)!r} names no stream key")
        return _spec("redis-stream", url, query, key=key)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis-stream", "redis-streams"):
        # redis-stream://[:PASSWORD@]HOST[:PORT]/DB/KEY
        segments = parts.path.lstrip("/").split("/", 1)
        if len(segments) != 2 or not segments[0].isdigit() or not segments[1]:  # noqa: PLR2004
            raise ValueError(f"sink {mask_url(url)!r}: expected redis-stream://HOST:PORT/DB/KEY")
        db, key = segments
        redis_scheme = "rediss" if scheme == "redis-streams" else "redis"
        redis_url = urlunsplit((redis_scheme, parts.netloc, f"/{db}", "", ""))
        return _spec("redis-stream", url, parts.query, key=key, redis_url=redis_url)
    if scheme == "celery":
        queue = parts.netloc
        task = parts.path.lstrip("/")
        if not queue or not task:
            raise ValueError(f"sink {url!r}: expected celery://QUEUE/TASK_NAME")
        return _spec("celery", url, parts.query, queue=queue, task=task)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"sink {mask_url(url)!r} has no host")
        return _spec("webhook", url, parts.query)
    raise ValueError(
        f"unknown sink scheme in {mask_url(url)!r} "
        "(expected redis-stream:KEY, redis-stream://, celery://, http:// or https://)"
    )


_SINK_START = re.compile(r"^\s*(redis-streams?:|celery://|https?://)", re.IGNORECASE)


def split_sink_list(value: str) -> list[str]:
    """Split ``ETBRIDGE_SINKS`` on the commas that start a new sink URL.

    Routing filters hold commas of their own (``?types=updated,created``), so a
    piece that does not start with a sink scheme continues the previous URL.
    """
    urls: list[str] = []
    for piece in value.split(","):
        if urls and not _SINK_START.match(piece):
            urls[-1] += "," + piece
        elif piece.strip():
            urls.append(piece.strip())
    return urls


def parse_sink_list(value: str | list[str]) -> list[SinkSpec]:
    """Parse ``ETBRIDGE_SINKS`` (or a list of sink URLs); ``ValueError`` if there is none."""
    urls = split_sink_list(value) if isinstance(value, str) else value
    if not urls:
        raise ValueError("at least one sink URL is needed")
    return [parse_sink(url) for url in urls]
