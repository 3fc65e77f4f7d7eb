"""Settings: the only module that reads the environment.

Every variable of the contract's table lives here, typed and validated once.
Entry points call :func:`load_settings`; an operator mistake becomes a
:class:`SettingsError` whose message is one line naming the variable, which the
entry points print without a traceback before exiting non-zero.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from etbridge import redisconn

ENV_PREFIX = "ETBRIDGE_"

DEFAULT_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
EVENT_OPS = ("created", "updated", "deleted", "snapshot")


class SettingsError(Exception):
    """An operator mistake in the configuration; ``str()`` is one printable line."""


# ---------------------------------------------------------------------------
# Sinks


@dataclass(frozen=True)
class SinkFilter:
    """Routing filter from a sink URL's query: ``?types=updated&fields=status&orgs=12,34``.

    Empty tuples mean "everything". ``types`` holds operation names
    (``created``, ``updated``, ``deleted``, ``snapshot``, ``schema.changed``).
    """

    types: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    orgs: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.types or self.fields or self.orgs)


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
    # webhook: the URL that is POSTed to (routing parameters removed).
    target: str = ""
    filter: SinkFilter = field(default_factory=SinkFilter)

    @property
    def name(self) -> str:
        """A stable, secret-free identifier (consumer group names, Redis keys, metrics)."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:12]

    @property
    def display(self) -> str:
        """The URL with any password masked, for logs and ``status``."""
        return mask_url(self.url)


_FILTER_KEYS = ("types", "fields", "orgs")


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


def _split_filter(query: str) -> tuple[SinkFilter, str]:
    """Take the routing parameters out of a query string; return the rest."""
    params = parse_qs(query, keep_blank_values=True)
    values: dict[str, tuple[str, ...]] = {}
    for key in _FILTER_KEYS:
        raw = params.pop(key, [])
        values[key] = tuple(v.strip() for item in raw for v in item.split(",") if v.strip())
    for op in values["types"]:
        if op not in (*EVENT_OPS, "schema.changed"):
            raise ValueError(f"unknown event type {op!r} in types= filter")
    rest = urlencode([(k, v) for k, vs in params.items() for v in vs])
    return SinkFilter(**values), rest


def parse_sink(url: str) -> SinkSpec:
    """Parse one sink URL of the contract into a :class:`SinkSpec`.

    >>> parse_sink("redis-stream:etbridge:events").key
    'etbridge:events'
    """
    url = url.strip()
    if url.startswith("redis-stream:") and not url.startswith("redis-stream://"):
        rest = url[len("redis-stream:") :]
        key, _, query = rest.partition("?")
        flt, _ = _split_filter(query)
        if not key:
            raise ValueError(f"sink {mask_url(url)!r} names no stream key")
        return SinkSpec(kind="redis-stream", url=url, key=key, filter=flt)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    flt, query = _split_filter(parts.query)
    if scheme in ("redis-stream", "redis-streams"):
        # redis-stream://[:PASSWORD@]HOST[:PORT]/DB/KEY
        segments = parts.path.lstrip("/").split("/", 1)
        if len(segments) != 2 or not segments[0].isdigit() or not segments[1]:
            raise ValueError(f"sink {mask_url(url)!r}: expected redis-stream://HOST:PORT/DB/KEY")
        db, key = segments
        redis_scheme = "rediss" if scheme == "redis-streams" else "redis"
        redis_url = urlunsplit((redis_scheme, parts.netloc, f"/{db}", "", ""))
        return SinkSpec(kind="redis-stream", url=url, key=key, redis_url=redis_url, filter=flt)
    if scheme == "celery":
        queue = parts.netloc
        task = parts.path.lstrip("/")
        if not queue or not task:
            raise ValueError(f"sink {url!r}: expected celery://QUEUE/TASK_NAME")
        return SinkSpec(kind="celery", url=url, queue=queue, task=task, filter=flt)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"sink {mask_url(url)!r} has no host")
        target = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))
        return SinkSpec(kind="webhook", url=url, target=target, filter=flt)
    raise ValueError(
        f"unknown sink scheme in {mask_url(url)!r} "
        "(expected redis-stream:KEY, redis-stream://, celery://, http:// or https://)"
    )


# ---------------------------------------------------------------------------
# Settings


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]

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


class Settings(BaseSettings):
    """etbridge's configuration (environment variables ``ETBRIDGE_*`` or a ``.env`` file)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str = "crm_read"
    api_url: str = "https://api.eventtemple.com"
    token_url: str = ""
    orgs: CsvList = Field(default_factory=list)
    redis_url: str = "redis://localhost:6379/0"
    broker_url: str = ""
    rate_limit: int = Field(default=100, gt=0)
    poll_interval: float = Field(default=30.0, gt=0)
    sweep_interval: float = Field(default=3600.0, gt=0)
    lookback: float = Field(default=300.0, ge=0)
    ignore_fields: CsvList = Field(default_factory=lambda: ["updated_at"])
    emit_baseline: bool = False
    sinks: Annotated[list[SinkSpec], NoDecode] = Field(
        default_factory=lambda: [parse_sink("redis-stream:etbridge:events")]
    )
    webhook_secret: SecretStr | None = None
    retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [float(v) for v in DEFAULT_RETRY_SCHEDULE]
    )
    webhook_timeout: float = Field(default=15.0, gt=0)
    sentry_dsn: SecretStr | None = Field(default=None, validation_alias="SENTRY_DSN")

    # Beyond the contract's table (issues 3-8); all optional.
    resources: CsvList = Field(default_factory=lambda: ["bookings"])
    token_encryption_key: SecretStr | None = None
    log_format: Literal["kv", "json"] = "kv"
    log_level: str = "INFO"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    outbox_retention: float = Field(default=7 * 86400.0, gt=0)
    stream_maxlen: int = Field(default=100_000, gt=0)
    page_size: int = Field(default=100, ge=1, le=100)
    http_timeout: float = Field(default=30.0, gt=0)
    environment: str = "production"
    discovery_interval: float = Field(default=3600.0, gt=0)
    # Issue 17: replicas that must acknowledge a page commit (WAIT) before it counts.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout: float = Field(default=1.0, gt=0)

    @field_validator("orgs", "ignore_fields", "resources", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = split_sink_list(value)
            if not items:
                raise ValueError("at least one sink URL is needed")
            return [parse_sink(item) for item in items]
        return value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = _split_csv(value)
            try:
                numbers = [float(item) for item in items]
            except ValueError:
                raise ValueError("expected comma-separated seconds, e.g. 0,5,300") from None
            if not numbers or any(n < 0 for n in numbers):
                raise ValueError("expected one or more non-negative numbers of seconds")
            return numbers
        return value

    @field_validator("api_url", "token_url", "redis_url", "broker_url")
    @classmethod
    def _url(cls, value: str, info: Any) -> str:
        if not value:
            return value
        if info.field_name == "redis_url":
            redisconn.parse(value)  # ValueError: a one-line reason
            if value.partition("://")[0] not in redisconn.SINGLE:
                return value
        parts = urlsplit(value)
        allowed = {
            "api_url": ("http", "https"),
            "token_url": ("http", "https"),
            "redis_url": ("redis", "rediss", "unix"),
            "broker_url": ("redis", "rediss", "unix", "amqp", "amqps", "sentinel", "memory"),
        }[info.field_name]
        if parts.scheme not in allowed or (
            parts.scheme not in ("unix", "memory") and not parts.hostname
        ):
            raise ValueError(f"expected a {' or '.join(allowed)} URL")
        return value.rstrip("/") if info.field_name == "api_url" else value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one resource is needed")
        for name in value:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"{name!r} is not a resource name")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if not self.token_url:
            object.__setattr__(self, "token_url", f"{self.api_url}/oauth/token")
        if not self.broker_url:
            try:
                object.__setattr__(self, "broker_url", redisconn.broker_url(self.redis_url))
            except ValueError as exc:
                raise ValueError(f"BROKER_URL: {exc}") from None
        if self.redis_wait_replicas and redisconn.parse(self.redis_url).kind == "cluster":
            raise ValueError("REDIS_WAIT_REPLICAS: not supported with a redis+cluster:// URL")
        if self.broker_url.startswith("sentinel://") and (
            redisconn.parse(self.redis_url).kind != "sentinel"
        ):
            raise ValueError(
                "BROKER_URL: a sentinel:// broker takes its service name from "
                f"REDIS_URL={redisconn.FORM_SENTINEL}"
            )
        has_webhook = any(s.kind == "webhook" for s in self.sinks)
        secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        if has_webhook and not secret:
            raise ValueError("WEBHOOK_SECRET: required when a sink is http(s)")
        if secret and not secret.startswith("whsec_"):
            raise ValueError("WEBHOOK_SECRET: expected a whsec_… key (Standard Webhooks)")
        return self

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.scope.split())


# Variables whose names do not follow ENV_PREFIX + field name.
_ALIASES = {"sentry_dsn": "SENTRY_DSN"}


def _variable(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "settings"
    name = str(loc[0])
    return _ALIASES.get(name, ENV_PREFIX + name.upper())


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad variable and what is wrong, never its value."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if not loc and ":" in msg.split(" ", 1)[0]:
            # A cross-field check names its own variable ("WEBHOOK_SECRET: ...").
            name, _, msg = msg.partition(": ")
            parts.append(f"{ENV_PREFIX}{name}: {msg}")
            continue
        if err.get("type") == "missing":
            msg = "is required but not set"
        parts.append(f"{_variable(loc)}: {msg}")
    return "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, raising :class:`SettingsError` on a mistake."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("configuration error: " + describe_validation_error(exc)) from None
