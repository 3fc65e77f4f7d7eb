"""EventTempleClient: the one way etbridge talks to the Event Temple API.

- One pooled :class:`requests.Session` (injectable, so tests can test at the
  transport), ``(connect, read)`` timeouts, ``Accept: application/vnd.api+json``,
  ``X-API-ORG`` per call, and any :class:`requests.auth.AuthBase` for the token.
- Every API call first takes a slot from the fleet's :class:`RequestBudget`;
  every answer's ``X-Api-Request-Remaining`` feeds it back, and a 429 pauses
  the whole fleet for its ``Retry-After``.
- An HTTP answer becomes data or a typed error in exactly one function,
  :func:`raise_for_response`; transport failures become
  :class:`~etbridge.errors.TransportError` in :func:`transport_error`.
- Retriable errors are retried with exponential backoff and full jitter,
  bounded in count and in total time; ``Retry-After`` wins over the backoff,
  and a wait longer than ``budget_wait`` goes back to the caller (a Celery
  task retries with ``countdown=exc.retry_after`` instead of holding a slot).
- Listings are walked by a :class:`Paginator`, which yields validated
  :class:`Page` objects, so callers commit page by page and can resume from a
  saved cursor; it refuses a repeated cursor instead of looping.

Error messages and logs name the org and the path, never a token or header.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests
import requests.auth
from requests.adapters import HTTPAdapter

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
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings

log = logging.getLogger("etbridge.client")

MEDIA_TYPE = "application/vnd.api+json"
MAX_PAGE_SIZE = 100
INCREMENTAL_FILTER = "filter[updated_at][gt]"

try:
    _VERSION = version("etbridge")
except PackageNotFoundError:  # running from a source tree that is not installed
    _VERSION = "0"
USER_AGENT = f"etbridge/{_VERSION}"


# ---------------------------------------------------------------------------
# Results


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


@dataclass(frozen=True)
class Organization:
    """An organization of the app's chain; ``org_id`` is the ``X-API-ORG`` value."""

    org_id: str
    name: str
    raw: dict[str, Any] = field(repr=False, compare=False)


# ---------------------------------------------------------------------------
# Turning answers into data or typed errors (the one place)


def _where(org_id: str | None, path: str) -> str:
    return f"GET {path} (org {org_id})" if org_id is not None else f"GET {path}"


# A budget wait longer than this re-applies the auth before sending (seconds).
_TOKEN_RECHECK_AFTER = 0.2
# The longest Retry-After honoured (seconds); the API's windows are one minute.
MAX_RETRY_AFTER = 900.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if value is None:
        return None
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
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    # The API's windows are a minute long; a Retry-After of hours or years is a
    # broken header, and obeying it would stop the whole fleet for that long.
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _redact(text: str, resp: requests.Response) -> str:
    """Remove the bearer token the request carried, should a server echo it."""
    request = resp.request
    header = request.headers.get("Authorization") if request is not None else None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if header:
        token = header.split(" ", 1)[-1].strip()
        if len(token) >= 4:
            text = text.replace(token, "***")
    return text


def _error_detail(resp: requests.Response) -> tuple[str, list[dict[str, Any]]]:
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
    return _redact(text, resp), objects


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
    - 429 -> RateLimited (``retry_after`` from ``Retry-After``, seconds or HTTP-date)
    - 408, 5xx -> TransportError / ServerError (retriable)
    - 401 -> AuthenticationError
    - 400/422 on a request with ``filter[updated_at]`` -> FilterRejected
    - other 4xx -> FatalError(status=...) with the JSON:API ``errors`` detail
    """
    where = _where(org_id, path)
    status = resp.status_code
    if 200 <= status < 300:
        media = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media and "json" not in media:
            raise MalformedResponse(f"{where}: HTTP {status} with a {media} body, not JSON:API")
        try:
            doc = json.loads(resp.content)
        # RecursionError: a body nested deeper than the parser's stack is malformed too.
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedResponse(
                f"{where}: HTTP {status} with an invalid or truncated JSON body"
            ) from None
        if not isinstance(doc, dict) or "data" not in doc:
            raise MalformedResponse(f"{where}: HTTP {status} body is not a JSON:API document")
        return doc
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if status == 429:
        raise RateLimited(f"{where}: HTTP 429 rate limited", retry_after=retry_after)
    if status >= 500:
        detail, _ = _error_detail(resp)
        raise ServerError(
            f"{where}: HTTP {status}" + (f" ({detail})" if detail else ""), retry_after=retry_after
        )
    if status == 408:
        raise TransportError(f"{where}: HTTP 408 request timeout", retry_after=retry_after)
    detail, errors = _error_detail(resp)
    suffix = f": {detail}" if detail else ""
    if status == 401:
        raise AuthenticationError(f"{where}: HTTP 401 unauthorized{suffix}")
    if 400 <= status < 500:
        if (
            status in (400, 422)
            and _carries_incremental_filter(resp)
            and not _blames_other_parameter(errors)
        ):
            raise FilterRejected(
                f"{where}: HTTP {status}, the updated_at filter was rejected{suffix}",
                status=status,
            )
        raise FatalError(f"{where}: HTTP {status}{suffix}", status=status)
    # 1xx, or a 3xx that was not followed: not an answer we can use.
    raise MalformedResponse(f"{where}: unexpected HTTP {status}")


def transport_error(
    exc: requests.RequestException, *, org_id: str | None, path: str
) -> TransportError | None:
    """The typed error for a request that got no usable answer, or ``None`` if not transport."""
    where = _where(org_id, path)
    if isinstance(exc, requests.Timeout):
        return TransportError(f"{where}: {type(exc).__name__} (no answer in time)")
    if isinstance(
        exc,
        requests.ConnectionError
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return TransportError(f"{where}: {type(exc).__name__}")
    return None


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
    where = _where(org_id, path)
    data = doc.get("data")
    if not isinstance(data, list):
        raise MalformedResponse(f"{where}: 'data' is not a list")
    seen: set[str] = set()
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise MalformedResponse(f"{where}: data[{index}] is not an object")
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise MalformedResponse(f"{where}: data[{index}] has no string id")
        if item.get("type") != resource:
            raise MalformedResponse(f"{where}: data[{index}] is not of type {resource!r}")
        if item_id in seen:
            raise MalformedResponse(f"{where}: id {item_id} appears twice in one page")
        seen.add(item_id)
    included = doc.get("included", [])
    if included is None:
        included = []
    if not isinstance(included, list) or not all(isinstance(i, dict) for i in included):
        raise MalformedResponse(f"{where}: 'included' is not a list of objects")
    meta = doc.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise MalformedResponse(f"{where}: 'meta' is not an object")
    after = meta.get("after_cursor")
    if after is not None and not isinstance(after, str):
        raise MalformedResponse(f"{where}: meta.after_cursor is not a string")
    has_more_raw = meta.get("has_more")
    if has_more_raw is None:
        # No flag: trust a cursor only if the page was not empty.
        has_more = bool(after) and bool(data)
    elif isinstance(has_more_raw, bool):
        has_more = has_more_raw
    else:
        raise MalformedResponse(f"{where}: meta.has_more is not a boolean")
    next_cursor = after if has_more and after else None
    return Page(
        data=data,
        included=included,
        meta=meta,
        cursor=cursor,
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


def format_timestamp(when: datetime) -> str:
    """ISO 8601 UTC with ``Z`` and whole seconds (the API's precision), for filters.

    Truncating (not rounding) keeps a ``gt`` filter inclusive of the boundary second.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("updated_after must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# Pagination


class Paginator(Iterator[Page]):
    """Walks a cursor-paginated listing, one validated :class:`Page` per step.

    Stops after a page without ``has_more`` or without a next cursor. Raises
    :class:`RepeatedCursor` (a :class:`MalformedResponse`) when the API hands
    back a cursor it already gave, which would loop forever. ``cursor`` is
    always where the next page starts, so a caller that saves it after
    committing a page can resume there; after a retriable error, calling
    ``next()`` again asks for the same page.
    """

    def __init__(
        self,
        client: EventTempleClient,
        org_id: str | None,
        resource: str,
        params: Mapping[str, str],
        *,
        after: str | None = None,
        page_size: int | None = MAX_PAGE_SIZE,
    ) -> None:
        self._client = client
        self.org_id = org_id
        self.resource = resource
        self._params = dict(params)
        self._page_size = page_size
        self.path = f"/v2/{resource}"
        self.cursor: str | None = after
        self.pages_fetched = 0
        self.done = False
        self._used: set[str] = {after} if after else set()

    def __iter__(self) -> Paginator:
        return self

    def __next__(self) -> Page:
        if self.done:
            raise StopIteration
        params = dict(self._params)
        if self._page_size is not None:
            params["page[size]"] = str(self._page_size)
        if self.cursor is not None:
            params["page[after]"] = self.cursor
        doc = self._client.get_document(self.org_id, self.path, params)
        page = parse_page(
            doc, resource=self.resource, cursor=self.cursor, org_id=self.org_id, path=self.path
        )
        if page.next_cursor is not None:
            if page.next_cursor in self._used:
                self.done = True
                raise RepeatedCursor(
                    f"{_where(self.org_id, self.path)}: the API repeated a cursor "
                    f"after {self.pages_fetched + 1} pages"
                )
            self._used.add(page.next_cursor)
        else:
            self.done = True
        self.cursor = page.next_cursor
        self.pages_fetched += 1
        return page


# ---------------------------------------------------------------------------
# The client


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


class EventTempleClient:
    """A client of the Event Temple API v2 for one application (one client id).

    ``auth`` puts the bearer token on requests (:class:`etbridge.auth.BearerAuth`
    in production). ``budget`` is the fleet's :class:`RequestBudget`; without
    one, nothing limits the rate (tools and tests only). Retriable failures
    are retried at most ``max_retries`` times within ``max_retry_time``
    seconds; waits longer than ``budget_wait`` (for a budget slot or a
    ``Retry-After``) are handed back as :class:`RateLimited` /
    :class:`RetriableError` with ``retry_after`` set.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        auth: requests.auth.AuthBase,
        budget: RequestBudget | None = None,
        session: requests.Session | None = None,
        max_retries: int = 4,
        max_retry_time: float = 60.0,
        budget_wait: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 15.0,
        timeout: tuple[float, float] | None = None,
        pool_size: int = 10,
    ) -> None:
        self.base_url = settings.api_url.rstrip("/")
        self.auth = auth
        self.budget = budget
        self.max_retries = max_retries
        self.max_retry_time = max_retry_time
        self.budget_wait = budget_wait
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # Connecting should be quick on any healthy network; reading a page may not be.
        self.timeout = timeout or (min(settings.http_timeout, 10.0), settings.http_timeout)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # No urllib3-level retries: every retry must draw from the budget.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self.session = session

    def __repr__(self) -> str:
        return f"EventTempleClient(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> EventTempleClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- public API -----------------------------------------------------------

    def pages(
        self,
        org_id: str,
        resource: str = "bookings",
        *,
        updated_after: datetime | None = None,
        sort: str | None = None,
        include: str | None = None,
        after: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Paginator:
        """A :class:`Paginator` over ``/v2/{resource}`` of one org.

        ``updated_after`` adds ``filter[updated_at][gt]`` (a
        :class:`FilterRejected` says the org must be swept instead); ``after``
        resumes from a cursor saved from :attr:`Page.next_cursor`.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        params: dict[str, str] = {}
        if updated_after is not None:
            params[INCREMENTAL_FILTER] = format_timestamp(updated_after)
        if sort:
            params["sort"] = sort
        if include:
            params["include"] = include
        return Paginator(self, org_id, resource, params, after=after, page_size=page_size)

    def organizations(self) -> list[Organization]:
        """Every organization of the app's chain (``GET /v2/organizations``), all pages."""
        orgs: list[Organization] = []
        for page in Paginator(self, None, "organizations", {}, page_size=None):
            for item in page.data:
                attributes = item.get("attributes")
                attributes = attributes if isinstance(attributes, dict) else {}
                api_org_id = attributes.get("api_org_id")
                org_id = str(api_org_id) if api_org_id not in (None, "") else str(item["id"])
                orgs.append(
                    Organization(org_id=org_id, name=str(attributes.get("name") or ""), raw=item)
                )
        return orgs

    def get_one(self, org_id: str, resource: str, id: str) -> dict[str, Any] | None:
        """The resource object ``/v2/{resource}/{id}``, or ``None`` if the API says 404/410."""
        path = f"/v2/{quote(resource, safe='')}/{quote(id, safe='')}"
        try:
            doc = self.get_document(org_id, path, {})
        except FatalError as exc:
            if exc.status in (404, 410):
                return None
            raise
        data = doc.get("data")
        if data is None:
            return None
        if not isinstance(data, dict) or data.get("id") != id or data.get("type") != resource:
            raise MalformedResponse(f"{_where(org_id, path)}: 'data' is not the {resource} {id}")
        return data

    def get_document(
        self, org_id: str | None, path: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        """GET ``path`` within the budget, retrying retriable failures; the JSON:API document."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            # Preparing applies the auth (it may fetch a token) before the slot
            # is taken, so that grant and send are as close together as possible.
            prepared = self._prepare(org_id, path, params)
            if self.budget is not None:
                # A RateLimited here goes straight to the caller: the budget
                # already waited as long as a worker slot should be held.
                waited = time.monotonic()
                self.budget.acquire(self.budget_wait)
                if time.monotonic() - waited > _TOKEN_RECHECK_AFTER:
                    # The token put on before the wait may have expired meanwhile
                    # (short-lived tokens): put the current one on again.
                    prepared = self._prepare(org_id, path, params)
            try:
                return self._send(prepared, org_id, path)
            except RetriableError as exc:
                delay = self._retry_delay(exc, attempt, started)
                if delay is None:
                    log.warning(
                        "api giving up org=%s path=%s attempts=%d error=%s retry_after=%s",
                        org_id,
                        path,
                        attempt,
                        type(exc).__name__,
                        _fmt(exc.retry_after),
                    )
                    raise
                log.info(
                    "api retry org=%s path=%s attempt=%d error=%s delay=%.2f",
                    org_id,
                    path,
                    attempt,
                    type(exc).__name__,
                    delay,
                )
                if delay > 0:
                    time.sleep(delay)

    # -- internals ----------------------------------------------------------------

    def _retry_delay(self, exc: RetriableError, attempt: int, started: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up now."""
        if attempt > self.max_retries:
            return None
        if exc.retry_after is not None:
            # The server knows best; but a long wait belongs to the caller's scheduler.
            if exc.retry_after > self.budget_wait:
                return None
            delay = exc.retry_after
        else:
            # Full jitter: spreads a fleet's retries over the whole interval.
            delay = random.uniform(
                0.0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
            )
        if time.monotonic() - started + delay > self.max_retry_time:
            return None
        return delay

    def _prepare(
        self, org_id: str | None, path: str, params: Mapping[str, str]
    ) -> requests.PreparedRequest:
        headers = {"Accept": MEDIA_TYPE, "User-Agent": USER_AGENT}
        if org_id is not None:
            headers["X-API-ORG"] = str(org_id)
        request = requests.Request(
            "GET", self.base_url + path, params=dict(params), headers=headers, auth=self.auth
        )
        return self.session.prepare_request(request)

    def _send(
        self, prepared: requests.PreparedRequest, org_id: str | None, path: str
    ) -> dict[str, Any]:
        settings = self.session.merge_environment_settings(prepared.url, {}, None, None, None)
        try:
            resp = self.session.send(
                prepared, timeout=self.timeout, allow_redirects=True, **settings
            )
        except requests.RequestException as exc:
            error = transport_error(exc, org_id=org_id, path=path)
            if error is None:
                raise
            raise error from None
        self._feed_budget(resp)
        return raise_for_response(resp, org_id=org_id, path=path)

    def _feed_budget(self, resp: requests.Response) -> None:
        if self.budget is None:
            return
        if resp.history:
            # Requests sent on our behalf without a slot (a redirect, an auth retry).
            self.budget.record(len(resp.history))
        if resp.status_code == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            # Without Retry-After, a short pause still stops the fleet's stampede.
            self.budget.pause(retry_after if retry_after is not None else 1.0)
            # The pause is the exact signal; a 429's "Remaining: 0" would only
            # keep the fleet stopped for a whole window after the pause.
            return
        self.budget.observe(
            _int_header(resp, "X-Api-Request-Remaining"), _int_header(resp, "X-Api-Request-Limit")
        )


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"
