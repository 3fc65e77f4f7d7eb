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
from typing import Any

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "etbridge_log_context", default=None
)
_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Register a value that must never appear in a log line (8 chars or more)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


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
    if not text or any(c in text for c in ' "='):
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
