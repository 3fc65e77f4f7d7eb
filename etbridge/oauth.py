"""The OAuth token endpoint: one client-credentials request, every answer typed.

:class:`TokenEndpoint` posts the grant and maps the answer: 200 to a
:class:`TokenResponse`, 429/408/5xx to the retriable errors of
:func:`etbridge.jsonapi.transient_error` (``Retry-After`` capped like every
other), anything else to :class:`~etbridge.errors.AuthenticationError` with the
RFC 6749 §5.2 ``error`` code. The client secret never reaches a message.
Used by :class:`etbridge.tokencache.TokenCache` and by ``etbridge check``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.auth
from pydantic import SecretStr

from etbridge import keys
from etbridge.errors import AuthenticationError, MalformedResponse, TransportError
from etbridge.jsonapi import transient_error
from etbridge.settings import Settings, mask_url

DEFAULT_EXPIRES_IN = 7200.0
"""Lifetime assumed when the token response has no ``expires_in`` (Event Temple: 2 h)."""

_ERROR_DESCRIPTION_MAX = 300


@dataclass(frozen=True)
class Credentials:
    """What a token request needs from the settings (read in one place)."""

    token_url: str
    client_id: str
    scope: str
    secret: SecretStr = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        return cls(settings.token_url, settings.client_id, settings.scope, settings.client_secret)

    @property
    def cache_id(self) -> str:
        """A hash naming this token in Redis (token URL + client id + scope, no secret)."""
        return keys.digest(self.token_url, self.client_id, self.scope)


@dataclass(frozen=True)
class TokenResponse:
    """The parts of a token endpoint answer etbridge uses."""

    access_token: str
    expires_in: float


def parse_token_response(body: Any) -> TokenResponse:
    """Read ``access_token`` and ``expires_in`` (default 7200 s); ignore ``created_at``.

    Raises :class:`MalformedResponse` when there is no usable token.
    """
    if not isinstance(body, dict):
        raise MalformedResponse("token endpoint answered 200 without a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise MalformedResponse("token endpoint answered 200 without an access_token")
    raw = body.get("expires_in")
    expires_in = DEFAULT_EXPIRES_IN
    if raw is not None and not isinstance(raw, bool):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value) and value > 0:
            expires_in = value
    return TokenResponse(access_token=token, expires_in=expires_in)


class TokenEndpoint:
    """The OAuth token endpoint of one set of :class:`Credentials`."""

    def __init__(
        self, settings: Settings, *, session: requests.Session | None = None, timeout: float
    ) -> None:
        self.credentials = Credentials.from_settings(settings)
        self._session = session if session is not None else requests.Session()
        self.timeout = timeout

    def __repr__(self) -> str:
        c = self.credentials
        return f"TokenEndpoint(url={mask_url(c.token_url)!r}, client_id={c.client_id!r})"

    def request(self) -> TokenResponse:
        """POST the client-credentials grant; map every failure to a typed error."""
        url = self.credentials.token_url
        try:
            resp = self._session.post(
                url,
                json=self._grant(),
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                auth=_NoAuth(),
            )
        except requests.Timeout:
            raise TransportError(
                f"token request to {mask_url(url)} timed out after {self.timeout:g}s"
            ) from None
        except requests.RequestException as exc:
            # ``from None``: the chained exception's frames hold the request body.
            raise TransportError(
                f"token request to {mask_url(url)} failed: {type(exc).__name__}"
            ) from None
        if resp.status_code == 200:
            try:
                body = resp.json()
            except ValueError:
                raise MalformedResponse(
                    "token endpoint answered 200 with a non-JSON body"
                ) from None
            return parse_token_response(body)
        transient = transient_error(resp, at="token endpoint", secrets=(self._secret(),))
        if transient is not None:
            raise transient
        code, description = self._error_details(resp)
        raise AuthenticationError(
            f"token endpoint refused the credentials ({code}): {description}", code=code
        )

    def _secret(self) -> str:
        return self.credentials.secret.get_secret_value()

    def _grant(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self.credentials.client_id,
            "client_secret": self._secret(),
            "scope": self.credentials.scope,
        }

    def _error_details(self, resp: requests.Response) -> tuple[str, str]:
        """The RFC 6749 §5.2 ``error`` and ``error_description``, scrubbed of the secret."""
        code, description = f"http_{resp.status_code}", ""
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("error"), str) and body["error"]:
                code = body["error"]
            if isinstance(body.get("error_description"), str):
                description = body["error_description"]
        if not description:
            description = f"HTTP {resp.status_code} from the token endpoint"
        return self._scrub(code)[:64], self._scrub(description)[:_ERROR_DESCRIPTION_MAX]

    def _scrub(self, text: str) -> str:
        secret = self._secret()
        return text.replace(secret, "***") if secret else text


def fetch_token(settings: Settings, session: requests.Session | None = None) -> TokenResponse:
    """One token request, outside the shared cache (``etbridge check``)."""
    return TokenEndpoint(settings, session=session, timeout=settings.http_timeout).request()


class _NoAuth(requests.auth.AuthBase):
    """Keeps a session-level auth (say, a BearerAuth) off the token request."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r
