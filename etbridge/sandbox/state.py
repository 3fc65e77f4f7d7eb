"""The one mutable object a sandbox process serves from."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from etbridge.sandbox.applications import Applications
from etbridge.sandbox.auth import TokenRegistry
from etbridge.sandbox.churn import Churn
from etbridge.sandbox.config import SandboxConfig
from etbridge.sandbox.counters import Counters
from etbridge.sandbox.faults import Faults
from etbridge.sandbox.glitches import Glitches
from etbridge.sandbox.ratelimit import FixedWindowLimiter
from etbridge.sandbox.store import Store


@dataclass(eq=False)
class SandboxState:
    """Data, tokens, limiter, faults, counters and churn of one sandbox."""

    config: SandboxConfig
    clock: Callable[[], float]
    store: Store
    tokens: TokenRegistry
    limiter: FixedWindowLimiter
    faults: Faults
    counters: Counters
    churn: Churn
    #: Lifetime of tokens issued from now on (the admin config call may change it).
    token_ttl: int
    #: The OAuth applications and the orgs each may see.
    apps: Applications
    #: Per-org lies: empty or thinned listings, a 403 org header, an unlisted org.
    glitches: Glitches = field(default_factory=Glitches)

    @classmethod
    def create(cls, config: SandboxConfig, clock: Callable[[], float] = time.time) -> SandboxState:
        """Generate the data and set every knob from the start-up config."""
        store = Store(
            orgs=config.orgs,
            bookings=config.bookings,
            contacts=config.contacts,
            seed=config.seed,
            clock=clock,
        )
        apps = Applications(config.applications())
        return cls(
            config=config,
            clock=clock,
            store=store,
            apps=apps,
            tokens=TokenRegistry(apps.secrets()),
            limiter=FixedWindowLimiter(config.rate_limit, _own_limits(config)),
            faults=Faults(config.seed),
            counters=Counters(),
            churn=Churn(store),
            token_ttl=config.token_ttl,
        )

    def reset(self) -> None:
        """Counters to zero, faults and churn off, rate-limit windows and knobs as at start.

        Data, tokens and the log stay: tests sharing a sandbox read them relative to now.
        """
        self.counters = Counters()
        self.faults.reset()
        self.glitches.reset()
        self.churn.set_rate(0.0)
        self.limiter.reset()
        self.limiter.limit = self.config.rate_limit
        self.limiter.limits = _own_limits(self.config)
        self.token_ttl = self.config.token_ttl


def _own_limits(config: SandboxConfig) -> dict[str, int]:
    """The applications' own request limits (the others use ``--rate-limit``)."""
    return {app.client_id: app.rate_limit for app in config.applications() if app.rate_limit}
