"""The public API: ``POST /oauth/token`` and the ``/v2/`` JSON:API endpoints.

Every ``/v2/`` call goes through one pipeline, in this order: count it against the
application's rate limit (natural 429), check the bearer token (401), then injected
faults (forced 429, 429 storm, delay, 500, HTML 502), then the endpoint itself, whose
200 body may finally be cut short. So every answer, faulty or not, was counted.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from etbridge.sandbox import pagination
from etbridge.sandbox.auth import TokenError, claimed_client, parse_token_request
from etbridge.sandbox.counters import Counters
from etbridge.sandbox.faults import HTML_502, truncate
from etbridge.sandbox.glitches import Glitch
from etbridge.sandbox.jsonapi import CONTENT_TYPE, dumps, error_document
from etbridge.sandbox.pagination import BOOKING_SORTS, InvalidCursor, Sort
from etbridge.sandbox.records import RESOURCES, Org, Record
from etbridge.sandbox.state import SandboxState
from etbridge.sandbox.timestamps import parse_iso8601

_K = TypeVar("_K")

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_PAGE_KEYS = frozenset({"page[size]", "page[after]", "page[before]"})
_FILTER_KEY = re.compile(r"filter\[([^\[\]]+)\]\[([^\[\]]+)\]")
_FILTER_PREDICATES = frozenset({"gt", "gteq"})
_INCLUDABLE: dict[str, tuple[str, ...]] = {
    "bookings": ("account", "contact", "owner"),
    "contacts": ("account",),
}
_SINGULAR = {"bookings": "Booking", "contacts": "Contact"}
_ORG_SORTS: dict[str, Sort] = {"id": Sort("id", False), "-id": Sort("id", True)}
_TOKEN_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ApiError(Exception):
    """An error answer (JSON:API ``errors`` document) raised from an endpoint."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ListParams:
    """Validated query parameters of a collection call."""

    size: int
    after: str | None
    before: str | None
    sort: Sort
    filters: list[tuple[str, float]] = field(default_factory=list)
    include: tuple[str, ...] = ()


class PublicApi:
    """Handlers of the public API, bound to one sandbox's state."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        """The token endpoint and one catch-all for ``/v2/`` (so unknown paths count too)."""
        return [
            Route("/oauth/token", self.token, methods=["POST"]),
            Route("/v2/{path:path}", self.v2, methods=_ALL_METHODS),
        ]

    # ------------------------------------------------------------------ tokens

    async def token(self, request: Request) -> Response:
        """``POST /oauth/token``: client credentials, JSON or form body, or HTTP Basic."""
        state = self.state
        state.counters.token_requests += 1
        body = await request.body()
        app_counts: Counter[str] = Counter()  # the named application's, if it is one
        try:
            params, basic = parse_token_request(
                request.headers.get("content-type", ""), body, request.headers.get("authorization")
            )
            claimed = claimed_client(params, basic)
            if claimed in state.apps:
                app_counts = state.counters.by_app[str(claimed)]
            app_counts["token_requests"] += 1
            token = state.tokens.grant(params, basic, state.clock(), state.token_ttl)
        except TokenError as exc:
            headers = dict(_TOKEN_HEADERS)
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="Doorkeeper", error="invalid_client"'
            return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        state.counters.token_requests_ok += 1
        app_counts["token_requests_ok"] += 1
        answer = {
            "access_token": token.value,
            "token_type": "Bearer",
            "expires_in": state.token_ttl,
            "scope": token.scope,
            "created_at": int(token.created_at),
        }
        return JSONResponse(answer, headers=_TOKEN_HEADERS)

    # --------------------------------------------------------------- /v2 pipeline

    # One early response per sandbox check.
    async def v2(self, request: Request) -> Response:  # noqa: PLR0911
        """Every ``/v2/...`` call: rate limit, auth, faults, endpoint (see module doc)."""
        state = self.state
        counters = state.counters
        # The application is the token's, valid or not; an unknown token counts
        # against the default application (the only one, without --app).
        app = state.tokens.owner(request.headers.get("authorization")) or state.apps.default
        now = state.clock()
        decision = state.limiter.hit(app, now)
        counters.count_request(app, decision.window_start, now)
        per_app = counters.by_app[app]
        headers = decision.headers()
        if decision.limited:
            counters.served_429 += 1
            per_app["served_429"] += 1
            detail = f"Rate limit of {decision.limit} requests per minute exceeded."
            return self._too_many(detail, decision.retry_after, headers)

        auth = state.tokens.check(request.headers.get("authorization"), state.clock())
        if not auth.ok:
            assert auth.reason is not None  # noqa: S101  (the sandbox: a broken invariant may crash)
            counters.unauthorized += 1
            per_app["unauthorized"] += 1
            counters.unauthorized_by_reason[auth.reason] += 1
            if auth.reason == "expired":
                counters.expired_token_requests += 1
            headers["WWW-Authenticate"] = (
                f'Bearer realm="Doorkeeper", error="invalid_token", '
                f'error_description="{auth.detail}"'
            )
            return self._answer(401, error_document(401, auth.detail), headers)

        faults = state.faults
        forced = faults.take_forced()
        if forced is not None:
            counters.forced_429 += 1
            return self._too_many("Rate limit exceeded.", forced, headers)
        if faults.roll("storm_429"):
            counters.faults_served["storm_429"] += 1
            return self._too_many(
                "Rate limit exceeded.", faults.settings.storm_retry_after, headers
            )
        if faults.roll("slow"):
            counters.faults_served["slow"] += 1
            await _hold(counters, faults.settings.slow_seconds)
            counters = state.counters  # an admin reset may have replaced them meanwhile
        if faults.roll("error_500"):
            counters.faults_served["error_500"] += 1
            detail = "We're sorry, but something went wrong."
            return self._answer(500, error_document(500, detail), headers)
        resource = _resource_of(request.path_params["path"])
        if resource is not None and faults.roll(f"{resource}_error_500"):
            counters.faults_served[f"{resource}_error_500"] += 1
            detail = "We're sorry, but something went wrong."
            return self._answer(500, error_document(500, detail), headers)
        if faults.roll("html_502"):
            counters.faults_served["html_502"] += 1
            # A proxy's page: no API headers, not JSON.
            counters.status_codes[502] += 1
            return Response(HTML_502, status_code=502, media_type="text/html")

        try:
            body = self._dispatch(request, app)
        except ApiError as exc:
            return self._answer(exc.status, error_document(exc.status, exc.detail), headers)
        if faults.roll("truncated"):
            counters.faults_served["truncated"] += 1
            body = truncate(body)
        return self._answer(200, body, headers)

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> Response:
        self.state.counters.status_codes[status] += 1
        headers["Content-Type"] = CONTENT_TYPE
        return Response(body, status_code=status, headers=headers)

    def _too_many(self, detail: str, retry_after: int, headers: dict[str, str]) -> Response:
        headers["X-Api-Request-Remaining"] = "0"
        headers["Retry-After"] = str(retry_after)
        return self._answer(429, error_document(429, detail), headers)

    def _dispatch(self, request: Request, app: str) -> bytes:
        path = request.path_params["path"].strip("/")
        parts = path.split("/") if path else []
        if parts == ["organizations"]:
            self._require_get(request)
            return self._organizations(request.query_params, app)
        if parts and parts[0] in RESOURCES and len(parts) <= 2:
            self._require_get(request)
            org = self._org(request, app)
            if len(parts) == 1:
                return self._list(org, parts[0], request.query_params)
            return self._one(org, parts[0], parts[1], request.query_params)
        raise ApiError(404, f"No route matches /v2/{path}.")

    @staticmethod
    def _require_get(request: Request) -> None:
        if request.method not in ("GET", "HEAD"):
            raise ApiError(
                405, f"{request.method} is not supported here (the sandbox is read-only)."
            )

    def _org(self, request: Request, app: str) -> Org:
        org_id = request.headers.get("x-api-org")
        if not org_id:
            raise ApiError(400, "The X-API-ORG header is required.")
        org = self.state.store.org(org_id.strip())
        if org is not None and not self.state.apps.sees(app, org.id):
            org = None  # another application's org: as if it did not exist
        glitch = self.state.glitches.get(org.id) if org is not None else None
        if glitch is not None and glitch.forbidden:
            self.state.counters.faults_served["forbidden"] += 1
            org = None
        if org is None:
            raise ApiError(403, f"Organization {org_id} is not accessible to this application.")
        return org

    # ----------------------------------------------------------------- endpoints

    def _organizations(self, query: QueryParams, app: str) -> bytes:
        params = _list_params(query, _ORG_SORTS, filterable=False, includable=())
        orgs = self.state.store.orgs
        glitches = self.state.glitches
        apps = self.state.apps
        keys = sorted(
            int(org_id)
            for org_id in orgs
            if apps.sees(app, org_id)
            and not ((g := glitches.get(org_id)) is not None and g.unlisted)
        )
        page = _select_ids(keys, params, accept=None)
        data = [orgs[str(key)].resource() for key in page.keys]
        meta = _meta(page.keys, pagination.id_cursor, page.has_more)
        return dumps({"data": data, "included": [], "meta": meta})

    def _list(self, org: Org, resource: str, query: QueryParams) -> bytes:
        """``GET /v2/bookings`` or ``/v2/contacts``: one keyset page of the org's collection."""
        state = self.state
        state.counters.list_requests_by_org[org.id] += 1
        state.counters.list_requests_by_resource[resource] += 1
        collection = org.collections[resource]
        records = collection.records
        filterable = not state.faults.settings.no_updated_filter
        includable = _INCLUDABLE[resource]
        params = _list_params(query, BOOKING_SORTS, filterable=filterable, includable=includable)
        mutations = state.faults.settings.mutate_between_pages
        if mutations and (params.after or params.before):
            state.counters.faults_served["mutate_between_pages"] += 1
            state.store.mutate(mutations, org.id, resources=[resource])

        accept_ts = _timestamp_filter(params.filters)
        meta: dict[str, Any]
        if params.sort.field == "id":
            by_id: Callable[[int], bool] | None = None
            if accept_ts is not None:
                keep = accept_ts

                def by_id(key: int) -> bool:
                    return keep(records[key].updated_ts)

            page_ids = _select_ids(collection.ids, params, accept=by_id)
            bookings = [records[key] for key in page_ids.keys]
            meta = _meta(page_ids.keys, pagination.id_cursor, page_ids.has_more)
        else:
            by_updated: Callable[[tuple[int, int]], bool] | None = None
            if accept_ts is not None:
                keep_ts = accept_ts

                def by_updated(key: tuple[int, int]) -> bool:
                    return keep_ts(key[0])

            page_keys = _select_updated(collection.by_updated, params, accept=by_updated)
            bookings = [records[key[1]] for key in page_keys.keys]
            meta = _meta(page_keys.keys, pagination.updated_cursor, page_keys.has_more)
        glitch = state.glitches.get(org.id)
        if glitch is not None and (glitch.empty_listings or glitch.drop_fraction):
            bookings = self._glitched(org, glitch, bookings, meta)

        # Resources are pre-encoded per record; joining bytes keeps big pages cheap.
        return b"".join(
            (
                b'{"data":[',
                b",".join(booking.encoded() for booking in bookings),
                b'],"included":',
                dumps(_included(org, bookings, params.include)),
                b',"meta":',
                dumps(meta),
                b"}",
            )
        )

    def _glitched(
        self, org: Org, glitch: Glitch, bookings: list[Record], meta: dict[str, Any]
    ) -> list[Record]:
        """A listing that lies: an empty 200, or some records left out (cursors kept)."""
        served = self.state.counters.faults_served
        if glitch.empty_listings:
            served["empty_listing"] += 1
            meta.update(after_cursor=None, before_cursor=None, has_more=False)
            return []
        kept = [b for b in bookings if not glitch.drops(org.id, b.id)]
        served["dropped_records"] += len(bookings) - len(kept)
        return kept

    def _one(self, org: Org, resource: str, raw_id: str, query: QueryParams) -> bytes:
        self.state.counters.get_requests_by_org[org.id] += 1
        include = _include_param(query, _INCLUDABLE[resource])
        records = org.collections[resource].records
        booking = records.get(int(raw_id)) if raw_id.isdigit() else None
        if booking is None:
            raise ApiError(404, f"Couldn't find {_SINGULAR[resource]} with 'id'={raw_id}")
        included = _included(org, [booking], include)
        return b"".join((b'{"data":', booking.encoded(), b',"included":', dumps(included), b"}"))


# --------------------------------------------------------------------- helpers


def _list_params(
    query: QueryParams,
    sorts: dict[str, Sort],
    *,
    filterable: bool,
    includable: tuple[str, ...],
) -> ListParams:
    """Validate ``page[...]``, ``sort``, ``filter[...]`` and ``include``; unknown ones → 400."""
    filters: list[tuple[str, float]] = []
    for key, value in query.multi_items():
        if key.startswith("page[") and key not in _PAGE_KEYS:
            raise ApiError(
                400, f"Unsupported pagination parameter {key}; use page[after]/page[before]."
            )
        if key.startswith("filter"):
            match = _FILTER_KEY.fullmatch(key)
            if not filterable or match is None or match.group(1) != "updated_at":
                raise ApiError(400, f"Unsupported filter {key}.")
            if match.group(2) not in _FILTER_PREDICATES:
                raise ApiError(
                    400, f"Unsupported filter predicate {match.group(2)} for updated_at."
                )
            try:
                filters.append((match.group(2), parse_iso8601(value)))
            except ValueError as exc:
                raise ApiError(422, f"Invalid ISO 8601 timestamp for {key}: {value!r}.") from exc

    raw_size = query.get("page[size]") or str(pagination.DEFAULT_PAGE_SIZE)
    try:
        size = int(raw_size)
    except ValueError as exc:
        raise ApiError(400, f"page[size] must be an integer, got {raw_size!r}.") from exc
    if not 1 <= size <= pagination.MAX_PAGE_SIZE:
        raise ApiError(400, f"page[size] must be between 1 and {pagination.MAX_PAGE_SIZE}.")

    raw_sort = query.get("sort") or "id"
    sort = sorts.get(raw_sort)
    if sort is None:
        raise ApiError(400, f"Unsupported sort {raw_sort!r}; use one of {', '.join(sorts)}.")
    return ListParams(
        size=size,
        # Blank cursors count as absent, as Rails' ``present?`` would treat them.
        after=query.get("page[after]") or None,
        before=query.get("page[before]") or None,
        sort=sort,
        filters=filters,
        include=_include_param(query, includable),
    )


def _include_param(query: QueryParams, includable: tuple[str, ...]) -> tuple[str, ...]:
    raw = query.get("include") or ""
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if name not in includable:
            raise ApiError(400, f"Unsupported include {name!r}.")
    return names


def _cursor_key(parse: Callable[[str], _K], cursor: str | None) -> _K | None:
    if cursor is None:
        return None
    try:
        return parse(cursor)
    except InvalidCursor as exc:
        raise ApiError(400, str(exc)) from exc


def _select_ids(
    keys: list[int], params: ListParams, accept: Callable[[int], bool] | None
) -> pagination.Page[int]:
    return pagination.select(
        keys,
        descending=params.sort.descending,
        after=_cursor_key(pagination.id_key, params.after),
        before=_cursor_key(pagination.id_key, params.before),
        size=params.size,
        accept=accept,
    )


def _select_updated(
    keys: list[tuple[int, int]],
    params: ListParams,
    accept: Callable[[tuple[int, int]], bool] | None,
) -> pagination.Page[tuple[int, int]]:
    # A lower bound on updated_at lets the walk start inside the index, not at its head.
    floor: tuple[int, int] | None = None
    for predicate, bound in params.filters:
        lowest = math.floor(bound) + 1 if predicate == "gt" else math.ceil(bound)
        if floor is None or lowest > floor[0]:
            floor = (lowest, -1)
    return pagination.select(
        keys,
        descending=params.sort.descending,
        after=_cursor_key(pagination.updated_key, params.after),
        before=_cursor_key(pagination.updated_key, params.before),
        size=params.size,
        accept=accept,
        floor=floor,
    )


def _timestamp_filter(filters: list[tuple[str, float]]) -> Callable[[int], bool] | None:
    """Predicate on ``updated_at`` for the filters, or None when there are none."""
    if not filters:
        return None

    def accept(ts: int) -> bool:
        for predicate, bound in filters:
            if (ts <= bound) if predicate == "gt" else (ts < bound):
                return False
        return True

    return accept


def _meta(keys: list[_K], cursor: Callable[[_K], str], has_more: bool) -> dict[str, Any]:
    """Cursors of the first and last record (only those: encoding is not free)."""
    return {
        "after_cursor": cursor(keys[-1]) if keys else None,
        "before_cursor": cursor(keys[0]) if keys else None,
        "has_more": has_more,
    }


def _resource_of(path: str) -> str | None:
    """The collection a ``/v2/`` path addresses, if it is one of the org collections."""
    head = path.strip("/").split("/", 1)[0]
    return head if head in RESOURCES else None


def _included(org: Org, bookings: list[Record], include: tuple[str, ...]) -> list[dict[str, Any]]:
    included: dict[tuple[str, str], dict[str, Any]] = {}
    for booking in bookings:
        for relationship in include:
            related_id = booking.relationships.get(relationship)
            if related_id is None:
                continue
            resource = org.related_resource(relationship, related_id)
            if resource is not None:
                included.setdefault((resource["type"], related_id), resource)
    return list(included.values())


async def _hold(counters: Counters, delay: float) -> None:
    """The ``slow`` fault: wait ``delay`` seconds, counted in ``held_now`` meanwhile."""
    held, key = counters.held_now, f"{delay:g}"
    held[key] += 1
    try:
        await asyncio.sleep(delay)
    finally:
        held[key] -= 1
