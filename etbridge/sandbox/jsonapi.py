"""JSON:API document encoding shared by the API, the store's caches and the admin API."""

from __future__ import annotations

import json
from typing import Any

#: What the API sends as Content-Type (Rails adds the charset parameter).
CONTENT_TYPE = "application/vnd.api+json; charset=utf-8"

_TITLES: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII text stays as-is, as Rails sends it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_document(status: int, detail: str) -> bytes:
    """``{"errors": [{"status", "title", "detail"}]}`` for one error."""
    title = _TITLES.get(status, "Error")
    return dumps({"errors": [{"status": str(status), "title": title, "detail": detail}]})
