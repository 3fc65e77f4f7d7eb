"""The admin API (``/_admin/``): how tests steer the sandbox and read its ground truth.

Only loopback clients may call it, so a sandbox bound to a public interface for a demo
cannot be steered from outside.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from etbridge.sandbox.records import RESOURCES
from etbridge.sandbox.state import SandboxState
from etbridge.sandbox.store import MUTATION_KINDS, MutationError, SchemaError

_Handler = Callable[[Request], Awaitable[dict[str, Any]]]

#: Upper bound of one admin mutate call, so a typo cannot stall the event loop for minutes.
_MAX_MUTATIONS = 100_000


class AdminError(Exception):
    """A refused admin call: ``{"error": detail}`` with an HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def is_loopback(client: tuple[str, int] | list[Any] | None) -> bool:
    """Whether an ASGI ``client`` address is a loopback address (IPv4, IPv6 or mapped)."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class LoopbackOnly:
    """ASGI middleware answering 403 to any non-loopback client (any path, any method)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_loopback(scope.get("client")):
            refusal = JSONResponse(
                {"error": "the admin API only answers loopback clients"}, status_code=403
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class AdminApi:
    """Handlers of ``/_admin/``, bound to one sandbox's state."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        """One mount, guarded by :class:`LoopbackOnly`."""
        routes = [
            Route("/mutate", self._wrap(self.mutate), methods=["POST"]),
            Route("/churn", self._wrap(self.churn), methods=["POST"]),
            Route("/faults", self._wrap(self.faults), methods=["GET", "POST"]),
            Route("/glitches", self._wrap(self.glitches), methods=["GET", "POST"]),
            Route("/force_429", self._wrap(self.force_429), methods=["POST"]),
            Route("/revoke_tokens", self._wrap(self.revoke_tokens), methods=["POST"]),
            Route("/orgs", self._wrap(self.add_org), methods=["POST"]),
            Route("/orgs/{org_id}", self._wrap(self.remove_org), methods=["DELETE"]),
            Route("/schema", self._wrap(self.schema), methods=["POST"]),
            Route("/counters", self._wrap(self.counters), methods=["GET"]),
            Route("/reset", self._wrap(self.reset), methods=["POST"]),
            Route("/truth", self._wrap(self.truth), methods=["GET"]),
            Route("/log", self._wrap(self.log), methods=["GET"]),
            Route("/config", self._wrap(self.config), methods=["GET", "POST"]),
            Route("/apps", self._wrap(self.apps), methods=["GET"]),
        ]
        return [Mount("/_admin", routes=routes, middleware=[Middleware(LoopbackOnly)])]

    @staticmethod
    def _wrap(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
        """Turn :class:`AdminError` into a JSON answer."""

        async def endpoint(request: Request) -> Response:
            try:
                result = await handler(request)
            except AdminError as exc:
                return JSONResponse({"error": exc.detail}, status_code=exc.status)
            return JSONResponse(result)

        endpoint.__name__ = handler.__name__
        return endpoint

    # ---------------------------------------------------------------- handlers

    async def mutate(self, request: Request) -> dict[str, Any]:
        """``{"count", "org"?, "kinds"?, "resource"?}`` → ``{"mutations": [log entries]}``."""
        body = await _body(request)
        resources = _resources(body.get("resource", "bookings"))
        count = _whole(body.get("count", 1), "count", 0, _MAX_MUTATIONS)
        org = _org_id(body.get("org"))
        kinds = body.get("kinds")
        if kinds is not None and (
            not isinstance(kinds, list) or not kinds or not all(k in MUTATION_KINDS for k in kinds)
        ):
            raise AdminError(400, f"kinds must be a non-empty list of {', '.join(MUTATION_KINDS)}")
        if org is not None and self.state.store.org(org) is None:
            raise AdminError(404, f"unknown org {org}")
        try:
            mutations = self.state.store.mutate(count, org, kinds, resources)
        except MutationError as exc:
            raise AdminError(409, str(exc)) from exc
        return {"mutations": mutations}

    async def churn(self, request: Request) -> dict[str, Any]:
        """``{"rate": k, "resource"?}``: k mutations/s from now on (0 stops)."""
        body = await _body(request)
        rate = _number(body.get("rate"), "rate", 0.0, 100_000.0)
        resources = _resources(body.get("resource", "bookings"))
        self.state.churn.set_rate(rate, resources)
        return {"rate": rate, "resources": resources}

    async def faults(self, request: Request) -> dict[str, Any]:
        """POST sets the given knobs (others unchanged); GET reads them."""
        faults = self.state.faults
        if request.method == "POST":
            try:
                faults.update(await _body(request))
            except ValueError as exc:
                raise AdminError(400, str(exc)) from exc
        return {"faults": faults.settings.as_dict(), "forced_429_left": faults.forced_left}

    async def glitches(self, request: Request) -> dict[str, Any]:
        """POST ``{"org", "empty_listings"?, "drop_fraction"?, "forbidden"?, "unlisted"?}``
        sets one org's glitches (others unchanged); GET reads every org's."""
        glitches = self.state.glitches
        if request.method == "POST":
            body = await _body(request)
            org = _org_id(body.pop("org", None))
            if org is None:
                raise AdminError(400, "org is required")
            if self.state.store.org(org) is None:
                raise AdminError(404, f"unknown org {org}")
            try:
                glitches.update(org, body)
            except ValueError as exc:
                raise AdminError(400, str(exc)) from exc
        return {"glitches": glitches.as_dict()}

    async def force_429(self, request: Request) -> dict[str, Any]:
        """``{"count": n, "retry_after": s}``: the next n API calls get 429."""
        body = await _body(request)
        count = _whole(body.get("count"), "count", 0, 1_000_000)
        retry_after = _whole(body.get("retry_after", 1), "retry_after", 1, 86_400)
        self.state.faults.force_429(count, retry_after)
        return {"forced_429_left": count, "retry_after": retry_after}

    async def revoke_tokens(self, request: Request) -> dict[str, Any]:
        """Every token issued so far (``{"app": client id}``: of one application) becomes
        invalid."""
        body = await _body(request)
        app = self._apps([body["app"]], "app")[0] if "app" in body else None
        return {"revoked": self.state.tokens.revoke_all(app)}

    async def add_org(self, request: Request) -> dict[str, Any]:
        """``{"bookings": m, "contacts": n, "apps"?: [client ids]}`` → ``{"org_id"}``.

        ``apps`` names the applications with an org list that may see the new org
        (an application without one sees every org anyway).
        """
        body = await _body(request)
        bookings = _whole(body.get("bookings", 10), "bookings", 0, 1_000_000)
        contacts = _whole(body.get("contacts", 10), "contacts", 0, 1_000_000)
        apps = self._apps(body.get("apps", []), "apps")
        org_id = self.state.store.add_org(bookings, contacts)
        self.state.apps.grant(apps, org_id)
        return {"org_id": org_id}

    def _apps(self, value: Any, name: str) -> list[str]:
        """A list of known client ids (``name`` is the field, for the refusal)."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AdminError(400, f"{name} must be a list of client ids")
        unknown = [v for v in value if v not in self.state.apps]
        if unknown:
            raise AdminError(404, f"unknown application {unknown[0]}")
        return list(value)

    async def apps(self, request: Request) -> dict[str, Any]:
        """``{"apps": {client_id: {"orgs": [ids] | null, "rate_limit": n}}}`` (no secrets)."""
        state = self.state
        limits = {cid: state.limiter.limit_of(cid) for cid in state.apps.specs}
        return {"apps": state.apps.as_dict(limits), "default": state.apps.default}

    async def remove_org(self, request: Request) -> dict[str, Any]:
        """``DELETE /_admin/orgs/{id}``."""
        org_id = request.path_params["org_id"]
        try:
            self.state.store.remove_org(org_id)
        except MutationError as exc:
            raise AdminError(404, str(exc)) from exc
        return {"removed": org_id}

    async def schema(self, request: Request) -> dict[str, Any]:
        """``{"add": attr, "value": v}`` or ``{"remove": attr}``."""
        body = await _body(request)
        add, remove = body.get("add"), body.get("remove")
        if (add is None) == (remove is None):
            raise AdminError(400, 'give exactly one of "add" and "remove"')
        name = add if add is not None else remove
        if not isinstance(name, str):
            raise AdminError(400, "the attribute name must be a string")
        try:
            if add is not None:
                self.state.store.schema_add(name, body.get("value"))
            else:
                self.state.store.schema_remove(name)
        except SchemaError as exc:
            raise AdminError(409, str(exc)) from exc
        return {"added" if add is not None else "removed": name}

    async def counters(self, request: Request) -> dict[str, Any]:
        """Everything counted since start-up or the last reset."""
        return self.state.counters.snapshot()

    async def reset(self, request: Request) -> dict[str, Any]:
        """Counters to zero, faults off, churn off, limiter and knobs as at start."""
        self.state.reset()
        return {"reset": True}

    async def truth(self, request: Request) -> dict[str, Any]:
        """All live bookings and deleted ids (``?org=ID`` for one org)."""
        org = request.query_params.get("org") or None
        try:
            return self.state.store.truth(org)
        except MutationError as exc:
            raise AdminError(404, str(exc)) from exc

    async def log(self, request: Request) -> dict[str, Any]:
        """Mutation log entries after ``?since=SEQ``."""
        raw = request.query_params.get("since") or "0"
        if not raw.isdigit():
            raise AdminError(400, "since must be a whole number")
        return {"log": self.state.store.log_since(int(raw))}

    async def config(self, request: Request) -> dict[str, Any]:
        """POST ``{"rate_limit"?, "token_ttl"?, "app"?}`` changes them until the next reset.

        ``rate_limit`` with ``app`` is that application's; without, every one's.
        """
        state = self.state
        limiter = state.limiter
        if request.method == "POST":
            body = await _body(request)
            unknown = sorted(set(body) - {"rate_limit", "token_ttl", "app"})
            if unknown:
                raise AdminError(400, f"unknown settings: {', '.join(unknown)}")
            app = self._apps([body["app"]], "app")[0] if "app" in body else None
            if app is not None and "rate_limit" not in body:
                raise AdminError(400, "app applies to rate_limit only")
            if "rate_limit" in body:
                limit = _whole(body["rate_limit"], "rate_limit", 1, 10**9)
                if app is None:
                    # Every application's limit, as with one application.
                    limiter.limit, limiter.limits = limit, {}
                else:
                    limiter.limits[app] = limit
            if "token_ttl" in body:
                state.token_ttl = _whole(body["token_ttl"], "token_ttl", 1, 10**9)
        return {
            "rate_limit": limiter.limit_of(state.apps.default),
            "token_ttl": state.token_ttl,
            "rate_limits": {cid: limiter.limit_of(cid) for cid in state.apps.specs},
        }


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise AdminError(400, "the body must be JSON") from exc
    if not isinstance(parsed, dict):
        raise AdminError(400, "the body must be a JSON object")
    return parsed


def _resources(value: Any) -> list[str]:
    """A ``resource`` field: one collection name, a list of them, or ``"all"``."""
    if value == "all":
        return list(RESOURCES)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(n in RESOURCES for n in names):
        raise AdminError(400, f"resource must be one or a list of {', '.join(RESOURCES)}, or all")
    return list(dict.fromkeys(names))


def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AdminError(400, f"{name} must be a whole number within {low}..{high}")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise AdminError(400, f"{name} must be a number within {low}..{high}")
    return float(value)


def _org_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AdminError(400, "org must be an org id")
    return str(value)
