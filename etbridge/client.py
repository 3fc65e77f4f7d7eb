"""EventTempleClient: the one way etbridge talks to the Event Temple API.

One pooled, injectable :class:`requests.Session` with ``(connect, read)``
timeouts and any :class:`requests.auth.AuthBase` for the token; every call
takes a slot from the fleet's :class:`~etbridge.ratelimit.RequestBudget` and
feeds the answer's rate-limit headers back (a 429 pauses the fleet).
Retriable errors are retried with jittered backoff (:mod:`etbridge.backoff`),
bounded in count and time; ``Retry-After`` wins, and a wait longer than
``budget_wait`` goes back to the caller. Answers become data or typed errors
in :mod:`etbridge.jsonapi`; listings are walked by
:class:`~etbridge.pagination.Paginator`. Logs name org and path, never a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
import requests.auth
from requests.adapters import HTTPAdapter

from etbridge import backoff
from etbridge.errors import FatalError, MalformedResponse, RetriableError
from etbridge.jsonapi import (
    MEDIA_TYPE,
    RepeatedCursor,
    parse_retry_after,
    raise_for_response,
    transport_error,
    where,
)
from etbridge.pagination import MAX_PAGE_SIZE, Paginator
from etbridge.ratelimit import RequestBudget
from etbridge.settings import Settings
from etbridge.timefmt import filter_timestamp

# Importable from here for the callers that predate the split (poller.py).
__all__ = ["EventTempleClient", "Organization", "RepeatedCursor", "Session"]

log = logging.getLogger("etbridge.client")

INCREMENTAL_FILTER = "filter[updated_at][gt]"

try:
    _VERSION = version("etbridge")
except PackageNotFoundError:  # running from a source tree that is not installed
    _VERSION = "0"
USER_AGENT = f"etbridge/{_VERSION}"


class Session(requests.Session):
    """A :class:`requests.Session` that reads the environment once per origin, not per request.

    requests scans the whole environment on every request (the proxy variables,
    then ``NO_PROXY`` for the host, then the CA bundle variables): a sixth of the
    CPU of a poll that finds nothing. A process's environment does not change
    under it, so requests' answer for one origin and the same arguments serves
    every later request.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], dict[str, Any]] = {}

    def merge_environment_settings(  # type: ignore[override]
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        parts = urlsplit(url)
        key = (
            parts.scheme,
            parts.netloc,
            tuple(sorted((proxies or {}).items())),
            tuple(sorted(self.proxies.items())),
            stream,
            self.stream,
            verify,
            self.verify,
            cert,
            self.cert,
            self.trust_env,
        )
        if key not in self._environment:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = dict(merged)
        found = self._environment[key]
        return {**found, "proxies": dict(found["proxies"])}


@dataclass(frozen=True)
class Organization:
    """An organization of the app's chain; ``org_id`` is the ``X-API-ORG`` value."""

    org_id: str
    name: str
    raw: dict[str, Any] = field(repr=False, compare=False)


# A budget wait longer than this re-applies the auth before sending (seconds).
_TOKEN_RECHECK_AFTER = 0.2


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

    def __init__(  # noqa: PLR0913 - keyword-only collaborators and knobs, all defaulted but two
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
            session = Session()
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
            params[INCREMENTAL_FILTER] = filter_timestamp(updated_after)
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
            raise MalformedResponse(f"{where(org_id, path)}: 'data' is not the {resource} {id}")
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
            delay = backoff.full_jitter(attempt, self.backoff_base, self.backoff_cap)
        if time.monotonic() - started + delay > self.max_retry_time:
            return None
        return delay

    def _prepare(
        self, org_id: str | None, path: str, params: Mapping[str, str]
    ) -> requests.PreparedRequest:
        headers = {"Accept": MEDIA_TYPE, "User-Agent": USER_AGENT}
        if org_id is not None:
            headers["X-API-ORG"] = str(org_id)
        # Encoded here as requests would (UTF-8, form encoding, None dropped): handed a
        # mapping, requests runs a dozen runtime Protocol checks per request on it.
        query = urlencode([(k, v) for k, v in params.items() if v is not None])
        request = requests.Request(
            "GET", self.base_url + path, params=query, headers=headers, auth=self.auth
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
