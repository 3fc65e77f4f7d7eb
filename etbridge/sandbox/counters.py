"""What the sandbox has seen and served, for tests to assert on (``GET /_admin/counters``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    """Running totals since start-up or the last admin reset."""

    token_requests: int = 0
    token_requests_ok: int = 0
    api_requests: int = 0
    requests_per_window: Counter[int] = field(default_factory=Counter)
    #: ``/v2`` requests per whole second (epoch): a benchmark's utilisation over
    #: exactly its measured span, not over the minute windows that straddle it.
    requests_per_second: Counter[int] = field(default_factory=Counter)
    served_429: int = 0
    forced_429: int = 0
    expired_token_requests: int = 0
    unauthorized: int = 0
    unauthorized_by_reason: Counter[str] = field(default_factory=Counter)
    list_requests_by_org: Counter[str] = field(default_factory=Counter)
    get_requests_by_org: Counter[str] = field(default_factory=Counter)
    list_requests_by_resource: Counter[str] = field(default_factory=Counter)
    faults_served: Counter[str] = field(default_factory=Counter)
    #: Requests the ``slow`` fault holds right now, by their delay in seconds ("60"):
    #: a test waits for a request to be held instead of sleeping and hoping.
    held_now: Counter[str] = field(default_factory=Counter)
    status_codes: Counter[int] = field(default_factory=Counter)
    #: Per application (client id): token_requests, token_requests_ok, api_requests,
    #: served_429, unauthorized.
    by_app: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    #: Per application: ``/v2`` requests per 60 s window.
    requests_per_window_by_app: defaultdict[str, Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def count_request(self, app: str, window_start: int, now: float) -> None:
        """One ``/v2`` request of ``app`` (before the limiter's answer is known)."""
        self.api_requests += 1
        self.by_app[app]["api_requests"] += 1
        self.requests_per_window[window_start] += 1
        self.requests_per_window_by_app[app][window_start] += 1
        self.requests_per_second[int(now)] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (window starts become string keys)."""
        return {
            "token_requests": self.token_requests,
            "token_requests_ok": self.token_requests_ok,
            "api_requests": self.api_requests,
            "requests_per_window": {str(k): v for k, v in sorted(self.requests_per_window.items())},
            "requests_per_second": {str(k): v for k, v in sorted(self.requests_per_second.items())},
            "served_429": self.served_429,
            "forced_429": self.forced_429,
            "expired_token_requests": self.expired_token_requests,
            "unauthorized": self.unauthorized,
            "unauthorized_by_reason": dict(self.unauthorized_by_reason),
            "list_requests_by_org": dict(self.list_requests_by_org),
            "get_requests_by_org": dict(self.get_requests_by_org),
            "list_requests_by_resource": dict(self.list_requests_by_resource),
            "faults_served": dict(self.faults_served),
            "held_now": {k: v for k, v in sorted(self.held_now.items()) if v},
            "status_codes": {str(k): v for k, v in sorted(self.status_codes.items())},
            "by_app": {app: dict(counts) for app, counts in sorted(self.by_app.items())},
            "requests_per_window_by_app": {
                app: {str(k): v for k, v in sorted(windows.items())}
                for app, windows in sorted(self.requests_per_window_by_app.items())
            },
        }
