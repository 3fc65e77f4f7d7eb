"""Settings: the only module that reads the environment.

Every variable of the contract's table lives here, typed and validated once.
Entry points call :func:`load_settings`; an operator mistake becomes a
:class:`SettingsError` whose message is one line naming the variable, which the
entry points print without a traceback before exiting non-zero.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from etbridge import keys, redisconn
from etbridge.deletions import Guard, parse_guard
from etbridge.secretfiles import FileSecretSource, SecretFileError, SecretLookup

# Sink URLs live in their own module; these names stay importable from here.
from etbridge.sinkurl import (
    DEFAULT_DISABLE_AFTER,
    EVENT_OPS,
    SINK_OPTIONS,
    SinkFilter,
    SinkSpec,
    mask_url,
    parse_duration,
    parse_sink,
    parse_sink_list,
    split_sink_list,
)

if TYPE_CHECKING:
    from etbridge.apps import AppConfig

__all__ = [
    "DEFAULT_DISABLE_AFTER",
    "EVENT_OPS",
    "SINK_OPTIONS",
    "Settings",
    "SettingsError",
    "SinkFilter",
    "SinkSpec",
    "load_settings",
    "mask_url",
    "parse_duration",
    "parse_sink",
    "secret_setting",
    "split_sink_list",
    "webhook_keys",
]


ENV_PREFIX = "ETBRIDGE_"
# Directories of secret files named like the variables (pydantic-settings' secrets_dir),
# separated by os.pathsep; read before the settings themselves.
SECRETS_DIR_VARIABLE = "ETBRIDGE_SECRETS_DIR"
# Settings that may carry credentials though they are not SecretStr (passwords in
# URLs); like every SecretStr field they may be given as NAME_FILE too.
_FILE_SECRET_FIELDS = ("redis_url", "broker_url", "sinks")

DEFAULT_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


class SettingsError(Exception):
    """An operator mistake in the configuration; ``str()`` is one printable line."""


# ---------------------------------------------------------------------------
# Webhook secrets


def secret_setting(variable: str) -> str | None:
    """A secret setting looked up by name at run time (``ETBRIDGE_WEBHOOK_SECRET_<NAME>``,
    named by a sink's ``?secret=NAME``): the environment, then ``.env``, each also as
    ``NAME_FILE``, then ``ETBRIDGE_SECRETS_DIR``; names match case-insensitively.

    A file that cannot be read raises ``ValueError`` naming its variable (the
    validator that calls this turns it into a one-line setting error).
    """
    try:
        return secret_lookup().get(variable)
    except SecretFileError as exc:
        raise ValueError(str(exc)) from None


def webhook_keys(variable: str, raw: str) -> tuple[str, ...]:
    """The ``whsec_`` keys of a secret setting (one or more, space-separated).

    ``ValueError`` names the variable (without ``ETBRIDGE_``) and which key is
    wrong, never a key itself.
    """
    keys = tuple(raw.split())
    if not keys:
        raise ValueError(f"{variable}: expected one or more whsec_… keys separated by spaces")
    for index, key in enumerate(keys, 1):
        which = f"key {index} of {len(keys)}" if len(keys) > 1 else "the key"
        if not key.startswith("whsec_"):
            raise ValueError(f"{variable}: {which} is not a whsec_… key (Standard Webhooks)")
        try:
            decoded = base64.b64decode(key.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise ValueError(f"{variable}: {which} is not whsec_ followed by base64")
    return keys


# ---------------------------------------------------------------------------
# Settings


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """etbridge's configuration (environment variables ``ETBRIDGE_*`` or a ``.env`` file)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Required without ETBRIDGE_APPS_FILE (checked in _cross_checks); the file's
    # applications bring their own credentials.
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
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
    # Deletion safety (issue 13): hold a sweep's deletions above this share AND count.
    delete_guard: Annotated[Guard, NoDecode] = Field(default_factory=Guard)
    # Issue 16: health endpoints of worker and beat; seconds a SIGTERMed worker may take.
    health_port: int | None = Field(default=None, ge=1, le=65535)
    shutdown_grace: float = Field(default=25.0, gt=0)
    # `etbridge console` on an address other than loopback requires it.
    console_token: SecretStr | None = None
    # Dead letters: their own retention and cap (issue 14), never ETBRIDGE_STREAM_MAXLEN.
    dlq_retention: float = Field(default=30 * 86400.0, gt=0)
    dlq_maxlen: int = Field(default=100_000, gt=0)
    # Issue 17: replicas that must acknowledge a page commit (WAIT) before it counts.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout: float = Field(default=1.0, gt=0)
    # Issue 17: plan/poll/deliver (and celery:// sink queues) as RabbitMQ quorum queues.
    broker_queue_type: Literal["classic", "quorum"] = "classic"
    # Issue 18: the applications (TOML, see etbridge.apps); empty: the one of CLIENT_ID.
    apps_file: str = ""

    @field_validator("orgs", "ignore_fields", "resources", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("delete_guard", mode="before")
    @classmethod
    def _guard(cls, value: Any) -> Any:
        return parse_guard(value) if isinstance(value, str) else value

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks(cls, value: Any) -> Any:
        return parse_sink_list(value) if isinstance(value, str) else value

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

    # Resolved signing keys per webhook sink name (see webhook_keys_for).
    _sink_keys: dict[str, tuple[SecretStr, ...]] = PrivateAttr(default_factory=dict)
    # The applications of ETBRIDGE_APPS_FILE, parsed and checked at start (see apps()).
    _apps: tuple[AppConfig, ...] = PrivateAttr(default=())
    # The application these settings act for (AppConfig.settings); None: the single one.
    _app: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _credentials(self) -> Settings:
        """CLIENT_ID and CLIENT_SECRET: required without ETBRIDGE_APPS_FILE only."""
        if self.apps_file:
            return self
        unset = [f for f in ("client_id", "client_secret") if f not in self.model_fields_set]
        if unset:
            # describe_validation_error puts ETBRIDGE_ before the first name.
            raise ValueError(
                "; ".join(
                    f"{ENV_PREFIX}{f.upper()}: is required but not set" for f in unset
                ).removeprefix(ENV_PREFIX)
            )
        if not self.client_id:
            raise ValueError("CLIENT_ID: String should have at least 1 character")
        return self

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
        if self.broker_queue_type == "quorum" and urlsplit(self.broker_url).scheme not in (
            "amqp",
            "amqps",
        ):
            raise ValueError(
                "BROKER_QUEUE_TYPE: quorum queues need a RabbitMQ broker "
                "(ETBRIDGE_BROKER_URL=amqp://… or amqps://…)"
            )
        if self.broker_url.startswith("sentinel://") and (
            redisconn.parse(self.redis_url).kind != "sentinel"
        ):
            raise ValueError(
                "BROKER_URL: a sentinel:// broker takes its service name from "
                f"REDIS_URL={redisconn.FORM_SENTINEL}"
            )
        secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        if secret.strip():
            webhook_keys("WEBHOOK_SECRET", secret)  # checked even when no sink uses it
        resolved: dict[str, tuple[SecretStr, ...]] = {}
        for spec in self.sinks:
            if spec.kind == "webhook":
                resolved[spec.name] = tuple(SecretStr(k) for k in self._resolve_keys(spec))
        self._sink_keys = resolved
        if self.apps_file:
            from etbridge.apps import AppsFileError, read_apps_file

            try:
                self._apps = read_apps_file(self.apps_file, secret_setting)
            except AppsFileError as exc:
                # "ETBRIDGE_APPS_FILE: app 'acme': ...": describe_validation_error's shape.
                raise ValueError(str(exc).removeprefix(ENV_PREFIX)) from None
        return self

    def apps(self) -> tuple[AppConfig, ...]:
        """The applications: those of ``ETBRIDGE_APPS_FILE``, else the one of ``CLIENT_ID``."""
        if self._apps:
            return self._apps
        from etbridge.apps import implicit_app

        return (implicit_app(self),)

    def _resolve_keys(self, spec: SinkSpec) -> tuple[str, ...]:
        """Read and check a webhook sink's keys; ``ValueError`` names the variable."""
        if spec.secret is None:
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if not secret.strip():
                raise ValueError("WEBHOOK_SECRET: required when a sink is http(s)")
            return webhook_keys("WEBHOOK_SECRET", secret)
        variable = f"WEBHOOK_SECRET_{spec.secret}"
        raw = secret_setting(ENV_PREFIX + variable)
        if not raw or not raw.strip():
            raise ValueError(f"{variable}: is required but not set (sink {spec.display} names it)")
        return webhook_keys(variable, raw)

    def webhook_keys_for(self, spec: SinkSpec) -> tuple[str, ...]:
        """The signing keys of a webhook sink: its ``?secret=NAME``'s, else the default.

        ``ValueError`` (naming the variable) for a sink outside ``ETBRIDGE_SINKS``
        whose keys are missing or malformed.
        """
        found = self._sink_keys.get(spec.name)
        if found is None:
            return self._resolve_keys(spec)
        return tuple(k.get_secret_value() for k in found)

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.scope.split())

    @property
    def app(self) -> str | None:
        """The application's name (``AppConfig.settings``); None: the one of ``CLIENT_ID``."""
        return self._app

    @property
    def keyspace(self) -> keys.Keyspace:
        """The application's Redis keys (``etb:app:<name>:…``; ``etb:…`` for the single one)."""
        return keys.Keyspace(self._app)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # NAME_FILE ranks with NAME: the environment's either over the .env file's either.
        lookup = SecretLookup(
            [getattr(env_settings, "env_vars", {}), getattr(dotenv_settings, "env_vars", {})]
        )
        files = FileSecretSource(settings_cls, lookup, secret_variables())
        return init_settings, env_settings, files, dotenv_settings, file_secret_settings


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


def secret_variables() -> dict[str, str]:
    """``{field: variable}`` of every setting that may also be given as ``NAME_FILE``."""
    return {
        name: _variable((name,))
        for name, info in Settings.model_fields.items()
        if name in _FILE_SECRET_FIELDS
        or info.annotation is SecretStr
        or SecretStr in get_args(info.annotation)
    }


def _secrets_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(SECRETS_DIR_VARIABLE, "").split(os.pathsep) if p]
    for path in dirs:
        if not path.is_dir():
            raise SettingsError(
                f"configuration error: {SECRETS_DIR_VARIABLE}: {str(path)!r} is not a directory"
            )
    return dirs


def secret_lookup() -> SecretLookup:
    """Where secrets come from: the environment, the ``.env`` file, ``ETBRIDGE_SECRETS_DIR``."""
    from dotenv import dotenv_values

    env_file = Path(str(Settings.model_config.get("env_file") or ".env"))
    dotenv = dotenv_values(env_file) if env_file.is_file() else {}
    return SecretLookup([dict(os.environ), dotenv], _secrets_dirs())


def read_secrets(prefix: str) -> dict[str, SecretStr]:
    """Dynamically named secrets: ``{variable: value}`` of every ``prefix…`` variable.

    Each may be given as ``NAME``, ``NAME_FILE`` or a file in ``ETBRIDGE_SECRETS_DIR``
    (``read_secrets("ETBRIDGE_WEBHOOK_SECRET_")`` → ``{"ETBRIDGE_WEBHOOK_SECRET_CRM": …}``).
    A file that cannot be read is a :class:`SettingsError` naming its variable.
    """
    try:
        return {k: SecretStr(v) for k, v in secret_lookup().values(prefix).items()}
    except SecretFileError as exc:
        raise SettingsError(f"configuration error: {exc}") from None


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, raising :class:`SettingsError` on a mistake."""
    try:
        # pydantic-settings' own secrets_dir: any setting, as a file named like its variable.
        options: dict[str, Any] = {"_secrets_dir": _secrets_dirs() or None}
        return Settings(**options, **overrides)
    except SecretFileError as exc:
        raise SettingsError(f"configuration error: {exc}") from None
    except ValidationError as exc:
        raise SettingsError("configuration error: " + describe_validation_error(exc)) from None
