"""Start-up settings of one sandbox process."""

from __future__ import annotations

from dataclasses import dataclass

#: Scopes the sandbox's OAuth applications may ask for.
KNOWN_SCOPES: tuple[str, ...] = ("crm_read", "crm_manage")


@dataclass(frozen=True)
class AppSpec:
    """One OAuth application the sandbox serves: its credentials, orgs and request limit."""

    client_id: str
    client_secret: str
    #: The org ids it may see; None: every org, also those added later.
    orgs: tuple[str, ...] | None = None
    #: Requests per minute; None: the sandbox's ``--rate-limit``.
    rate_limit: int | None = None


def parse_app(text: str) -> AppSpec:
    """``CLIENT_ID:SECRET[:ORGS[:RATE_LIMIT]]`` (ORGS comma-separated ids, empty or ``*``: all).

    ``ValueError`` says what is wrong, never the secret.
    """
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise ValueError("expected CLIENT_ID:SECRET[:ORGS[:RATE_LIMIT]]")
    orgs: tuple[str, ...] | None = None
    if len(parts) > 2 and parts[2].strip() not in ("", "*"):
        orgs = tuple(o.strip() for o in parts[2].split(",") if o.strip())
        if not all(o.isdigit() for o in orgs):
            raise ValueError(f"app {parts[0]}: ORGS are org ids like 1001,1002 (or *)")
    rate: int | None = None
    if len(parts) > 3 and parts[3].strip():
        if not parts[3].strip().isdigit() or int(parts[3]) < 1:
            raise ValueError(f"app {parts[0]}: RATE_LIMIT must be a whole number >= 1")
        rate = int(parts[3])
    return AppSpec(parts[0], parts[1], orgs, rate)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the command line can set; the defaults are docs/sandbox.md's."""

    host: str = "127.0.0.1"
    port: int = 0
    orgs: int = 3
    bookings: int = 50
    contacts: int = 10
    seed: int = 1
    token_ttl: int = 7200
    rate_limit: int = 100
    churn: float = 0.0
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"  # noqa: S105  (the sandbox's throwaway default)
    log_level: str = "warning"
    access_log: bool = False
    #: Several applications (``--app``); empty: the one of client_id / client_secret.
    apps: tuple[AppSpec, ...] = ()

    def applications(self) -> tuple[AppSpec, ...]:
        """The applications served, the first one being the default (see docs/sandbox.md)."""
        return self.apps or (AppSpec(self.client_id, self.client_secret),)
