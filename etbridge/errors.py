"""The exceptions of etbridge, each saying what the caller should do; HTTP statuses
become them in :mod:`etbridge.jsonapi`; messages never carry a secret::

    EtbridgeError
    ├── RetriableError          try again later (retry_after: seconds, if known)
    │   ├── RateLimited         429 from the API, or the fleet budget is spent
    │   ├── ServerError         5xx, including proxies' HTML error pages
    │   ├── TransportError      timeouts, refused or reset connections
    │   └── MalformedResponse   non-JSON, truncated or structurally wrong bodies
    ├── FatalError              a request the API will never accept (400/403/404/422)
    │   └── FilterRejected      the incremental filter is not supported: sweep instead
    ├── AuthenticationError     credentials or tokens refused (invalid_client, a second 401)
    ├── AccessLost              403/404 on the X-API-ORG of an org polled before: not deletion
    └── LeaseLost               this worker no longer owns the org: stop writing
"""

from __future__ import annotations


class EtbridgeError(Exception):
    """Root of every error etbridge raises on purpose."""


class RetriableError(EtbridgeError):
    """A transient condition: the same call may succeed later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RetriableError):
    """The API answered 429, or the fleet's request budget has no slot soon enough."""


class ServerError(RetriableError):
    """The API (or a proxy in front of it) answered 5xx."""


class TransportError(RetriableError):
    """No usable answer: a timeout, a refused or reset connection."""


class MalformedResponse(RetriableError):
    """An answer that is not the JSON:API document it should be."""


class FatalError(EtbridgeError):
    """A request the API rejects for good; retrying it changes nothing."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FilterRejected(FatalError):
    """The API refused ``filter[updated_at]``: the org must be polled by full sweeps."""


class AuthenticationError(EtbridgeError):
    """The token endpoint refused the credentials, or the API refused a fresh token.

    ``code`` is the OAuth error code when the server gave one (``invalid_client``).
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class LeaseLost(EtbridgeError):
    """Another worker holds the org's lease now; this one's writes are refused."""


class AccessLost(EtbridgeError):
    """The API refuses an org polled before (403/404 on its ``X-API-ORG``): its state is
    kept, nothing is emitted, and polling resumes from its watermark once access returns."""
