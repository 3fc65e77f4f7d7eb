"""Log lines: ``key=value`` by default, JSON with ``ETBRIDGE_LOG_FORMAT=json``.

Every line carries the ``org_id`` and ``task_id`` bound by :func:`bind` for the
task at hand, and passes through :class:`SecretFilter`, which replaces any
known secret (client secret, tokens, webhook key) by ``***`` as a last line of
defence: the code never logs them on purpose.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from etbridge.settings import Settings

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "etbridge_log_context", default=None
)
_secrets: set[str] = set()
# Access tokens come and go (one every ~2 h per process): keep the newest few,
# in insertion order, so a long-lived worker's set does not grow for ever.
_transient: dict[str, None] = {}
MAX_TRANSIENT = 32
_BEARER_PREFIX = "bearer "


def add_secret(value: str | None, *, transient: bool = False) -> None:
    """Register a value that must never appear in a log line (8 chars or more).

    ``transient`` values (access tokens) are kept among the newest
    :data:`MAX_TRANSIENT`; the others (client secret, webhook key) for good.
    """
    if not value or len(value) < 8:  # noqa: PLR2004  (shorter values are not secrets worth masking)
        return
    if not transient:
        _secrets.add(value)
        return
    _transient.pop(value, None)
    _transient[value] = None
    while len(_transient) > MAX_TRANSIENT:
        del _transient[next(iter(_transient))]


def add_settings_secrets(settings: Settings) -> None:
    """Register every secret the settings hold: the client secret, each webhook key
    (the default ones and those a sink names, each alone and without its ``whsec_``
    prefix), the token encryption key and the console token."""
    add_secret(settings.client_secret.get_secret_value())
    for field in (settings.webhook_secret, settings.token_encryption_key, settings.console_token):
        if field is not None:
            add_secret(field.get_secret_value())
    for spec in settings.sinks:
        if spec.kind != "webhook":
            continue
        try:
            keys = settings.webhook_keys_for(spec)
        except ValueError:
            continue  # the settings' own validation reports it
        for key in keys:
            add_secret(key)
            add_secret(key.removeprefix("whsec_"))
    if settings.apps_file and settings.app is None:
        # Each application of the file: its client secret and its sinks' keys.
        for app in settings.apps():
            add_settings_secrets(app.settings(settings))


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    # Longest first: a secret that contains another is replaced whole.
    for secret in sorted((*_secrets, *_transient), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def secret_hook(response: Any, *_args: Any, **_kwargs: Any) -> None:
    """A ``requests`` response hook: register the access tokens this session handles.

    It reads the bearer token a request carried, and the ``access_token`` of a
    token endpoint's answer, so that :func:`scrub` (and Sentry's
    ``before_send``) know every token this process ever held, even one that
    shows up in a third party's error message. Never raises.
    """
    try:
        for resp in (*getattr(response, "history", ()), response):
            header = resp.request.headers.get("Authorization") if resp.request else None
            if isinstance(header, bytes):
                header = header.decode("latin-1")
            if isinstance(header, str) and header.lower().startswith(_BEARER_PREFIX):
                add_secret(header[len(_BEARER_PREFIX) :].strip(), transient=True)
            body = resp.content if resp.status_code == 200 else b""  # noqa: PLR2004  (HTTP OK)
            if body and len(body) < 16384 and b'"access_token"' in body:  # noqa: PLR2004  (16 KiB)
                token = json.loads(body).get("access_token")
                if isinstance(token, str):
                    add_secret(token, transient=True)
    except Exception:  # a log helper must never break a request
        return


@contextlib.contextmanager
def bind(**values: str) -> Iterator[None]:
    """Attach key/values (``org_id``, ``task_id``) to every line logged inside."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.etb_context = _context.get() or {}
        return True


def _kv(value: Any) -> str:
    text = str(value)
    # Quote what would break the line apart: spaces, quotes, '=', line breaks.
    if not text or any(c in text for c in ' "=\n\r\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=info logger=etbridge.poller msg="poll done …" org_id=1001``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_kv(record.getMessage())}",
        ]
        for key, value in getattr(record, "etb_context", {}).items():
            parts.append(f"{key}={_kv(value)}")
        if record.exc_info:
            parts.append(f"exc={_kv(self.formatException(record.exc_info))}")
        return scrub(" ".join(parts))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "etb_context", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(doc, ensure_ascii=False))


def configure(fmt: str = "kv", level: str = "INFO", stream: Any = None) -> None:
    """Install one stderr handler on the root logger with etbridge's format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: their DEBUG/INFO lines add noise, not facts.
    # Celery logs every task received and succeeded at INFO; our own "poll done"
    # and delivery lines say more in one line.
    for name in (
        "urllib3",
        "celery.redirected",
        "kombu",
        "celery.app.trace",
        "celery.worker.strategy",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
