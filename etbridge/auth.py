"""Authentication for API calls: ``Authorization: Bearer`` from the fleet's shared token.

:class:`BearerAuth` is the :class:`requests.auth.AuthBase` that puts the token
on, and on a 401 drops it (only if still cached) and resends once. The token
itself comes from :mod:`etbridge.tokencache` (the shared Redis cache), which
asks :mod:`etbridge.oauth` (the token endpoint); the names callers use are
importable from here too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
import requests.auth

from etbridge.errors import AuthenticationError
from etbridge.oauth import TokenResponse, fetch_token
from etbridge.tokencache import TokenCache

__all__ = ["BearerAuth", "TokenCache", "TokenResponse", "fetch_token"]


# --- the requests auth ------------------------------------------------------------


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer`` from the shared cache, with one retry after a 401.

    On a 401 it drops the cached token only if it is still the one that was
    refused, takes the new one (fetching or waiting for it) and resends the
    request once; a second 401 raises :class:`AuthenticationError`.
    """

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache

    def __repr__(self) -> str:
        return f"BearerAuth(cache={self.cache!r})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.cache.get()}"
        # Remember where a file-like body starts, to resend it after a 401.
        position: int | None = None
        tell = getattr(r.body, "tell", None)
        if callable(tell):
            try:
                position = int(tell())
            except OSError:
                position = None
        r.register_hook("response", self._make_hook(position))  # type: ignore[no-untyped-call]
        return r

    def _make_hook(self, position: int | None) -> Any:
        def hook(response: requests.Response, **kwargs: Any) -> requests.Response:
            return self._handle_401(response, position, **kwargs)

        return hook

    def _handle_401(
        self, response: requests.Response, position: int | None, **kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401:
            return response
        request = response.request
        used = _bearer(request.headers.get("Authorization"))
        # Free the connection before the retry (as requests' HTTPDigestAuth does).
        _ = response.content
        response.close()
        if used is not None:
            self.cache.invalidate(used)
        token = self.cache.get()
        retry = request.copy()
        if position is not None:
            seek = getattr(retry.body, "seek", None)
            if callable(seek):
                seek(position)
        retry.headers["Authorization"] = f"Bearer {token}"
        # The copy carries our hook; the adapter does not run hooks, so no loop.
        second = response.connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        if second.status_code == 401:
            _ = second.content
            second.close()
            raise AuthenticationError(
                f"API refused a freshly fetched token (401 twice) for "
                f"{retry.method} {_path(retry.url)}",
                code="unauthorized",
            )
        return second


def _bearer(header: str | bytes | None) -> str | None:
    if header is None:
        return None
    text = header.decode() if isinstance(header, bytes) else header
    scheme, _, value = text.partition(" ")
    return value if scheme.lower() == "bearer" and value else None


def _path(url: str | None) -> str:
    return urlsplit(url or "").path or "/"
