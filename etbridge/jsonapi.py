"""Pure JSON:API answer handling: status to typed error, document checks, page parsing.

:func:`transient_error` is the one mapping of a transient HTTP status (429,
408, 5xx) to a :class:`~etbridge.errors.RetriableError`, used by the API
client and the token endpoint alike; :func:`parse_retry_after` is the one
``Retry-After`` parser, capped at :data:`MAX_RETRY_AFTER`. No I/O here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from etbridge import digest
from etbridge.errors import (
    AuthenticationError,
    FatalError,
    FilterRejected,
    MalformedResponse,
    RateLimited,
    RetriableError,
    ServerError,
    TransportError,
)

MEDIA_TYPE = "application/vnd.api+json"

MAX_RETRY_AFTER = 900.0
"""The longest ``Retry-After`` honoured (seconds). The API's windows are a minute
long; a header of hours or years is broken, and obeying it would stop the whole
fleet (API calls, or token requests) for that long."""


def parse_retry_after(
    value: str | bytes | None, *, now: float | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date).

    ``None`` when absent or unreadable; otherwise within ``[0, cap]``.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT by definition
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), cap)


def where(org_id: str | None, path: str, method: str = "GET") -> str:
    """How messages name a call: ``GET /v2/bookings (org 1001)``."""
    return f"{method} {path} (org {org_id})" if org_id is not None else f"{method} {path}"


def redact(text: str, resp: requests.Response, secrets: Sequence[str] = ()) -> str:
    """Remove the bearer token the request carried (and ``secrets``), should a server echo it."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    request = resp.request
    header = request.headers.get("Authorization") if request is not None else None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if header:
        token = header.split(" ", 1)[-1].strip()
        if len(token) >= 4:
            text = text.replace(token, "***")
    return text


def error_detail(
    resp: requests.Response, secrets: Sequence[str] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """A short, safe summary of a JSON:API ``errors`` body, and the error objects."""
    try:
        doc = json.loads(resp.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        media = resp.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
        return f"non-JSON body ({media})", []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return "", []
    objects = [e for e in errors if isinstance(e, dict)]
    parts = []
    for err in objects[:3]:
        title = str(err.get("title") or "").strip()
        detail = str(err.get("detail") or "").strip()
        parts.append(": ".join(p for p in (title, detail) if p))
    text = "; ".join(p for p in parts if p)
    if len(text) > 300:
        text = text[:297] + "..."
    return redact(text, resp, secrets), objects


def transient_error(
    resp: requests.Response, *, at: str, secrets: Sequence[str] = ()
) -> RetriableError | None:
    """The retriable error a 429, 408 or 5xx answer means, or ``None`` for any other status.

    ``at`` names the call in the message; ``secrets`` never appear in it.
    ``retry_after`` comes from ``Retry-After`` (capped: :func:`parse_retry_after`).
    """
    status = resp.status_code
    if status not in {429, 408} and status < 500:
        return None
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if status == 429:
        return RateLimited(f"{at}: HTTP 429 rate limited", retry_after=retry_after)
    if status == 408:
        return TransportError(f"{at}: HTTP 408 request timeout", retry_after=retry_after)
    detail, _ = error_detail(resp, secrets)
    return ServerError(
        f"{at}: HTTP {status}" + (f" ({detail})" if detail else ""), retry_after=retry_after
    )


def _carries_incremental_filter(resp: requests.Response) -> bool:
    url = resp.request.url if resp.request is not None else None
    if not url:
        return False
    return any(k.startswith("filter[updated_at]") for k, _ in parse_qsl(urlsplit(url).query))


def _blames_other_parameter(errors: list[dict[str, Any]]) -> bool:
    """True when the error objects point at a parameter that is not the updated_at filter."""
    params = [
        str(e["source"].get("parameter"))
        for e in errors
        if isinstance(e.get("source"), dict) and e["source"].get("parameter")
    ]
    return bool(params) and not any("updated_at" in p for p in params)


def raise_for_response(resp: requests.Response, *, org_id: str | None, path: str) -> dict[str, Any]:
    """The JSON:API document of a 2xx answer, or the typed error the answer means.

    - 2xx with a JSON object holding ``data`` -> that dict; anything else
      (HTML, truncated or non-JSON bodies, another shape) -> MalformedResponse
    - 429, 408, 5xx -> :func:`transient_error` (retriable)
    - 401 -> AuthenticationError
    - 400/422 on a request with ``filter[updated_at]`` -> FilterRejected
    - other 4xx -> FatalError(status=...) with the JSON:API ``errors`` detail
    """
    at = where(org_id, path)
    status = resp.status_code
    if 200 <= status < 300:
        media = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media and "json" not in media:
            raise MalformedResponse(f"{at}: HTTP {status} with a {media} body, not JSON:API")
        try:
            # NaN/Infinity (not JSON, accepted by json.loads) kept apart from null for the digest.
            doc = json.loads(resp.content, parse_constant=digest.parse_constant)
        # RecursionError: a body nested deeper than the parser's stack is malformed too.
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedResponse(
                f"{at}: HTTP {status} with an invalid or truncated JSON body"
            ) from None
        if not isinstance(doc, dict) or "data" not in doc:
            raise MalformedResponse(f"{at}: HTTP {status} body is not a JSON:API document")
        return doc
    transient = transient_error(resp, at=at)
    if transient is not None:
        raise transient
    detail, errors = error_detail(resp)
    suffix = f": {detail}" if detail else ""
    if status == 401:
        raise AuthenticationError(f"{at}: HTTP 401 unauthorized{suffix}")
    if 400 <= status < 500:
        if (
            status in (400, 422)
            and _carries_incremental_filter(resp)
            and not _blames_other_parameter(errors)
        ):
            raise FilterRejected(
                f"{at}: HTTP {status}, the updated_at filter was rejected{suffix}",
                status=status,
            )
        raise FatalError(f"{at}: HTTP {status}{suffix}", status=status)
    # 1xx, or a 3xx that was not followed: not an answer we can use.
    raise MalformedResponse(f"{at}: unexpected HTTP {status}")


def transport_error(
    exc: requests.RequestException, *, org_id: str | None, path: str
) -> TransportError | None:
    """The typed error for a request that got no usable answer, or ``None`` if not transport."""
    at = where(org_id, path)
    if isinstance(exc, requests.Timeout):
        return TransportError(f"{at}: {type(exc).__name__} (no answer in time)")
    if isinstance(
        exc,
        requests.ConnectionError
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return TransportError(f"{at}: {type(exc).__name__}")
    return None


# ---------------------------------------------------------------------------
# Pages


class RepeatedCursor(MalformedResponse):
    """The API handed back a cursor this listing already used: it would loop forever.

    Retriable like any malformed answer, but a caller that resumes from a saved
    cursor should start the listing over instead.
    """


@dataclass(frozen=True)
class Page:
    """One validated page of a listing.

    ``cursor`` is the ``page[after]`` it was fetched with (``None`` for the
    first page); ``next_cursor`` is where the next page starts, ``None`` on the
    last page. Save ``next_cursor`` to resume a listing later.
    """

    data: list[dict[str, Any]]
    included: list[dict[str, Any]]
    meta: dict[str, Any]
    cursor: str | None
    next_cursor: str | None
    has_more: bool


def _check_items(data: list[Any], resource: str, at: str) -> None:
    """Each item a ``{type, id}`` object of ``resource``, no id twice."""
    seen: set[str] = set()
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise MalformedResponse(f"{at}: data[{index}] is not an object")
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise MalformedResponse(f"{at}: data[{index}] has no string id")
        if item.get("type") != resource:
            raise MalformedResponse(f"{at}: data[{index}] is not of type {resource!r}")
        if item_id in seen:
            raise MalformedResponse(f"{at}: id {item_id} appears twice in one page")
        seen.add(item_id)


def parse_page(
    doc: Mapping[str, Any],
    *,
    resource: str,
    cursor: str | None,
    org_id: str | None,
    path: str,
) -> Page:
    """Validate one listing document and make it a :class:`Page`.

    A page that breaks the structure (``data`` not a list of ``{type, id}``
    objects of ``resource``, a duplicate id, a bad ``meta``) is rejected whole
    with :class:`MalformedResponse`, never half-used.
    """
    at = where(org_id, path)
    data = doc.get("data")
    if not isinstance(data, list):
        raise MalformedResponse(f"{at}: 'data' is not a list")
    _check_items(data, resource, at)
    included = doc.get("included", [])
    if included is None:
        included = []
    if not isinstance(included, list) or not all(isinstance(i, dict) for i in included):
        raise MalformedResponse(f"{at}: 'included' is not a list of objects")
    meta = doc.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise MalformedResponse(f"{at}: 'meta' is not an object")
    after = meta.get("after_cursor")
    if after is not None and not isinstance(after, str):
        raise MalformedResponse(f"{at}: meta.after_cursor is not a string")
    has_more_raw = meta.get("has_more")
    if has_more_raw is None:
        # No flag: trust a cursor only if the page was not empty.
        has_more = bool(after) and bool(data)
    elif isinstance(has_more_raw, bool):
        has_more = has_more_raw
    else:
        raise MalformedResponse(f"{at}: meta.has_more is not a boolean")
    next_cursor = after if has_more and after else None
    return Page(
        data=data,
        included=included,
        meta=meta,
        cursor=cursor,
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )
