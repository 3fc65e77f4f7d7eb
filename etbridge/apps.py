"""Event Temple applications: the ``ETBRIDGE_APPS_FILE`` (TOML), or one implicit application.

An application is one client id with its secret, scope, API, request budget,
orgs (or discovery) and sinks. :func:`parse_apps_file` reads the file into
:class:`AppConfig` objects and checks everything once (secret files read,
sink URLs parsed, webhook keys resolved); :func:`implicit_app` is today's
single application of ``ETBRIDGE_CLIENT_ID`` and friends. Mistakes are
:class:`AppsFileError`, one line naming the application and the field, never
a secret. The format and what is not wired yet: docs/applications.md.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from etbridge.secretfiles import SecretFileError, read_secret_file
from etbridge.sinkurl import SinkSpec, parse_sink_list

if TYPE_CHECKING:
    from etbridge.settings import Settings

VARIABLE = "ETBRIDGE_APPS_FILE"
#: The name of the single application of ``ETBRIDGE_CLIENT_ID`` (no apps file).
IMPLICIT_NAME = "default"
# Names go into Redis keys (no ':' or braces: hash tags) and into CloudEvents
# sources (/apps/<name>/orgs/...): lower-case letters, digits, '-' and '_'.
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_DEFAULT_API_URL = "https://api.eventtemple.com"

# Looks a webhook secret variable up by name (settings.secret_setting in production).
SecretSource = Callable[[str], str | None]


class AppsFileError(Exception):
    """A mistake in the apps file; ``str()`` is one line naming the application and field."""


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http or https URL")
    return value.rstrip("/")


class AppConfig(BaseModel):
    """One Event Temple application (one client id) and what etbridge does for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    secret_file: str | None = None
    scope: str = "crm_read"
    api_url: str = _DEFAULT_API_URL
    token_url: str = ""
    rate_limit: int = Field(default=100, gt=0)
    orgs: list[str] = Field(default_factory=list)
    # None: on exactly when no orgs are listed.
    discovery: bool | None = None
    sinks: list[SinkSpec]
    # The key of webhook sinks without ?secret=, and the named keys of ?secret=NAME.
    webhook_secret: SecretStr | None = None
    webhook_secret_file: str | None = None
    webhook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    webhook_secret_files: dict[str, str] = Field(default_factory=dict)

    # Resolved signing keys per webhook sink name (see webhook_keys_for).
    _sink_keys: dict[str, tuple[SecretStr, ...]] = PrivateAttr(default_factory=dict)
    # The single application of ETBRIDGE_CLIENT_ID (implicit_app): it keeps the keys of before.
    _implicit: bool = PrivateAttr(default=False)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "expected 1-40 lower-case letters, digits, - or _, starting with a letter"
            )
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        return _http_url(value) if value else value

    @field_validator("orgs", mode="before")
    @classmethod
    def _orgs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            # TOML lets one write orgs = [1001, 1002]; ids are strings everywhere else.
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks(cls, value: Any) -> Any:
        # One string as ETBRIDGE_SINKS, or a list of URLs.
        if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return parse_sink_list(value)
        return value

    @field_validator("webhook_secrets", "webhook_secret_files", mode="before")
    @classmethod
    def _secret_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name in value:
                if not isinstance(name, str) or not _SECRET_NAME.match(name):
                    raise ValueError("names are letters, digits and _ (as in ?secret=NAME)")
            return {k.upper(): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _checks(self) -> AppConfig:
        if (self.client_secret is None) == (self.secret_file is None):
            raise ValueError("client_secret|secret_file: give exactly one of them")
        if self.secret_file is not None:
            secret = _read("secret_file", self.secret_file)
            object.__setattr__(self, "client_secret", SecretStr(secret))
        if self.client_secret is None or not self.client_secret.get_secret_value().strip():
            raise ValueError("client_secret: is empty")
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError("webhook_secret|webhook_secret_file: give at most one of them")
        if self.webhook_secret_file is not None:
            key = _read("webhook_secret_file", self.webhook_secret_file)
            object.__setattr__(self, "webhook_secret", SecretStr(key))
        both = set(self.webhook_secrets) & set(self.webhook_secret_files)
        if both:
            raise ValueError(
                f"webhook_secret_files: {sorted(both)[0]} is in webhook_secrets too; set only one"
            )
        named = dict(self.webhook_secrets)
        for secret_name, path in self.webhook_secret_files.items():
            named[secret_name] = SecretStr(_read(f"webhook_secret_files.{secret_name}", path))
        object.__setattr__(self, "webhook_secrets", named)
        if not self.token_url:
            object.__setattr__(self, "token_url", f"{self.api_url}/oauth/token")
        if self.discovery is None:
            object.__setattr__(self, "discovery", not self.orgs)
        if self.discovery and self.orgs:
            raise ValueError("orgs|discovery: list orgs or turn discovery on, not both")
        if not self.discovery and not self.orgs:
            raise ValueError("orgs: no orgs listed and discovery is off")
        return self

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.scope.split())

    def resolve_keys(self, lookup: SecretSource) -> None:
        """Read and check every webhook sink's keys now; ``ValueError`` names the field.

        ``?secret=NAME`` takes the application's ``webhook_secrets.NAME``, else
        ``ETBRIDGE_WEBHOOK_SECRET_<NAME>`` through ``lookup``; a sink without it
        takes the application's ``webhook_secret``.
        """
        from etbridge.settings import ENV_PREFIX, webhook_keys

        resolved: dict[str, tuple[SecretStr, ...]] = {}
        if self.webhook_secret is not None:
            webhook_keys("webhook_secret", self.webhook_secret.get_secret_value())
        for spec in self.sinks:
            if spec.kind != "webhook":
                continue
            if spec.secret is None:
                if self.webhook_secret is None:
                    raise ValueError(f"webhook_secret: required by sink {spec.display}")
                field, raw = "webhook_secret", self.webhook_secret.get_secret_value()
            elif spec.secret in self.webhook_secrets:
                field = f"webhook_secrets.{spec.secret}"
                raw = self.webhook_secrets[spec.secret].get_secret_value()
            else:
                field = f"{ENV_PREFIX}WEBHOOK_SECRET_{spec.secret}"
                found = lookup(field)
                if not found or not found.strip():
                    raise ValueError(
                        f"webhook_secrets.{spec.secret}: is required but not set "
                        f"(nor {field}; sink {spec.display} names it)"
                    )
                raw = found
            resolved[spec.name] = tuple(SecretStr(k) for k in webhook_keys(field, raw))
        self._sink_keys = resolved

    def webhook_keys_for(self, spec: SinkSpec) -> tuple[str, ...]:
        """The signing keys of one of this application's webhook sinks."""
        return tuple(k.get_secret_value() for k in self._sink_keys.get(spec.name, ()))

    @property
    def webhook_key_names(self) -> tuple[str, ...]:
        """Which keys are configured (``default`` and the ``?secret=`` names), never values."""
        names = ["default"] if self.webhook_secret is not None else []
        return (*names, *sorted(self.webhook_secrets))

    def settings(self, base: Settings) -> Settings:
        """``base`` with this application's credentials, API, budget, orgs and sinks.

        What every part of etbridge that takes settings (client, token cache,
        relay) needs to act as this application; the rest (Redis, intervals,
        retry schedule) stays the fleet's.
        """
        if self.client_secret is None:  # _checks refuses such an application
            raise ValueError(f"application {self.name!r} has no client secret")
        copy = base.model_copy(
            update={
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": self.scope,
                "api_url": self.api_url,
                "token_url": self.token_url,
                "rate_limit": self.rate_limit,
                "orgs": list(self.orgs),
                "sinks": list(self.sinks),
                "webhook_secret": self.webhook_secret,
            }
        )
        copy._sink_keys = dict(self._sink_keys)
        # Its own Redis keyspace (etb:app:<name>:…); the implicit one keeps etb:….
        copy._app = None if self._implicit else self.name
        return copy


def _read(field: str, path: str) -> str:
    try:
        return read_secret_file(field, path)
    except SecretFileError as exc:
        raise ValueError(str(exc)) from None


def implicit_app(settings: Settings) -> AppConfig:
    """Today's single application, from ``ETBRIDGE_CLIENT_ID`` and the other settings."""
    app = AppConfig(
        name=IMPLICIT_NAME,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scope=settings.scope,
        api_url=settings.api_url,
        token_url=settings.token_url,
        rate_limit=settings.rate_limit,
        orgs=list(settings.orgs),
        sinks=list(settings.sinks),
        webhook_secret=settings.webhook_secret,
    )
    app._implicit = True
    # Its sinks' keys are those the settings resolved (ETBRIDGE_WEBHOOK_SECRET[_NAME]).
    app._sink_keys = {
        spec.name: tuple(SecretStr(k) for k in settings.webhook_keys_for(spec))
        for spec in settings.sinks
        if spec.kind == "webhook"
    }
    return app


def _describe(name: str, exc: ValidationError) -> str:
    """One line per error: ``app 'acme': field: what is wrong`` (never an input value)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "is required but not set"
        elif err.get("type") == "extra_forbidden":
            msg = "is not a known field"
        if not loc and ": " in msg and " " not in msg.split(": ", 1)[0]:
            loc, _, msg = msg.partition(": ")
        parts.append(f"app {name!r}: {loc}: {msg}" if loc else f"app {name!r}: {msg}")
    return "; ".join(parts)


def parse_apps(text: str, lookup: SecretSource) -> tuple[AppConfig, ...]:
    """The applications of an apps file's TOML text; :class:`AppsFileError` on a mistake.

    The file holds one table per application, ``[apps.<name>]``.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppsFileError(f"{VARIABLE}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"apps"})
    if unknown:
        raise AppsFileError(
            f"{VARIABLE}: unknown top-level key {unknown[0]!r} (expected [apps.NAME])"
        )
    tables = doc.get("apps")
    if not isinstance(tables, dict) or not tables:
        raise AppsFileError(f"{VARIABLE}: no applications (expected one [apps.NAME] table each)")
    apps: list[AppConfig] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise AppsFileError(f"{VARIABLE}: app {name!r}: expected a table [apps.{name}]")
        if "name" in table:
            raise AppsFileError(f"{VARIABLE}: app {name!r}: name: is the table's name, not a field")
        try:
            app = AppConfig(name=name, **table)
            app.resolve_keys(lookup)
        except ValidationError as exc:
            raise AppsFileError(f"{VARIABLE}: {_describe(name, exc)}") from None
        except ValueError as exc:
            raise AppsFileError(f"{VARIABLE}: app {name!r}: {exc}") from None
        apps.append(app)
    seen: dict[tuple[str, str], str] = {}
    for app in apps:
        identity = (app.token_url, app.client_id)
        if identity in seen:
            # One application twice would share one budget under two names.
            raise AppsFileError(
                f"{VARIABLE}: apps {seen[identity]!r} and {app.name!r} have the same client_id"
            )
        seen[identity] = app.name
    return tuple(apps)


def read_apps_file(path: str, lookup: SecretSource) -> tuple[AppConfig, ...]:
    """:func:`parse_apps` of the file at ``path``."""
    try:
        text = read_secret_file(VARIABLE, path)
    except SecretFileError as exc:
        raise AppsFileError(str(exc)) from None
    return parse_apps(text, lookup)
