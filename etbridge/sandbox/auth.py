"""OAuth 2.0 client-credentials tokens, answered in Doorkeeper's shape (RFC 6749)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from etbridge.sandbox.config import KNOWN_SCOPES


@dataclass
class Token:
    """An issued access token."""

    value: str
    created_at: float
    expires_at: float
    scope: str
    revoked: bool = False
    #: The application (client id) it was issued to.
    client_id: str = ""


class TokenError(Exception):
    """An RFC 6749 §5.2 error answer of the token endpoint."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        """``{"error", "error_description"}``."""
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class AuthCheck:
    """Outcome of checking a request's bearer token; ``reason`` is set when it fails."""

    reason: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the request may proceed."""
        return self.reason is None


_OK = AuthCheck(None)


def claimed_client(params: dict[str, str], basic: tuple[str, str] | None) -> str | None:
    """The client id a token request names (HTTP Basic first), whether or not it is right."""
    return basic[0] if basic else params.get("client_id")


class TokenRegistry:
    """Issues, checks and revokes tokens of the sandbox's OAuth applications.

    ``clients`` maps each application's client id to its secret.
    """

    def __init__(self, clients: dict[str, str]) -> None:
        self.clients = dict(clients)
        # Expired and revoked tokens stay known so a 401 can say why (and be counted).
        self._tokens: dict[str, Token] = {}

    def grant(
        self, params: dict[str, str], basic: tuple[str, str] | None, now: float, ttl: int
    ) -> Token:
        """Validate a token request and issue a token; raises :class:`TokenError`.

        Checks run in Doorkeeper's order: the grant type first, then the client,
        then the scope.
        """
        grant_type = params.get("grant_type")
        if not grant_type:
            raise TokenError(400, "invalid_request", "Missing required parameter: grant_type.")
        if grant_type != "client_credentials":
            raise TokenError(
                400,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server.",
            )
        client_id, client_secret = basic or (params.get("client_id"), params.get("client_secret"))
        expected = self.clients.get(client_id) if client_id is not None else None
        if not (
            expected is not None
            and client_secret is not None
            and secrets.compare_digest(client_secret.encode(), expected.encode())
        ):
            raise TokenError(
                401,
                "invalid_client",
                "Client authentication failed due to unknown client, no client authentication "
                "included, or unsupported authentication method.",
            )
        requested = params.get("scope", "").split()
        if any(scope not in KNOWN_SCOPES for scope in requested):
            raise TokenError(
                400,
                "invalid_scope",
                "The requested scope is invalid, unknown, or malformed.",
            )
        # Without a scope the application's full scope set is granted.
        scope = " ".join(dict.fromkeys(requested)) if requested else " ".join(KNOWN_SCOPES)
        assert client_id is not None  # noqa: S101  (checked above; the sandbox may crash)
        token = Token(secrets.token_urlsafe(32), now, now + ttl, scope, client_id=client_id)
        self._tokens[token.value] = token
        return token

    @staticmethod
    def _bearer(authorization: str | None) -> str | None:
        """The token value of a ``Bearer`` header, None without one."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None

    def owner(self, authorization: str | None) -> str | None:
        """The client id of the token a request carries (valid or not), None if unknown."""
        token = self._tokens.get(self._bearer(authorization) or "")
        return token.client_id if token is not None else None

    def check(self, authorization: str | None, now: float) -> AuthCheck:
        """Check an ``Authorization`` header; reasons: missing, unknown, expired, revoked."""
        value = self._bearer(authorization)
        if value is None:
            return AuthCheck("missing", "Authentication is required: send Authorization: Bearer.")
        token = self._tokens.get(value)
        if token is None:
            return AuthCheck("unknown", "The access token is invalid")
        # Expiry wins over revocation: a client that used a stale token should be told so.
        if now >= token.expires_at:
            return AuthCheck("expired", "The access token expired")
        if token.revoked:
            return AuthCheck("revoked", "The access token was revoked")
        return _OK

    def revoke_all(self, client_id: str | None = None) -> int:
        """Invalidate every issued token (of one application if given); return how many
        were still live."""
        live = 0
        for token in self._tokens.values():
            if client_id is not None and token.client_id != client_id:
                continue
            live += not token.revoked
            token.revoked = True
        return live


def parse_token_request(
    content_type: str, body: bytes, authorization: str | None
) -> tuple[dict[str, str], tuple[str, str] | None]:
    """Parameters of a token request (JSON or form body) and HTTP Basic credentials.

    Raises :class:`TokenError` (``invalid_request``) for a body it cannot read.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    params: dict[str, str] = {}
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            parsed: Any = json.loads(body or b"{}")
        except ValueError as exc:
            raise TokenError(400, "invalid_request", "The request body is not valid JSON.") from exc
        if not isinstance(parsed, dict):
            raise TokenError(400, "invalid_request", "The request body must be a JSON object.")
        params = {str(k): str(v) for k, v in parsed.items() if isinstance(v, str | int)}
    elif media_type in ("", "application/x-www-form-urlencoded"):
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise TokenError(400, "invalid_request", "The request body is not UTF-8.") from exc
        params = dict(pairs)
    else:
        raise TokenError(400, "invalid_request", f"Unsupported content type {media_type}.")
    return params, _basic_credentials(authorization)


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """``client_id:client_secret`` from ``Authorization: Basic`` (RFC 6749 §2.3.1)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    if not sep:
        return None
    return unquote(client_id), unquote(client_secret)
