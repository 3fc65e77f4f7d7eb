"""Start-up settings of one sandbox process."""

from __future__ import annotations

from dataclasses import dataclass

#: Scopes the sandbox's single OAuth application may ask for.
KNOWN_SCOPES: tuple[str, ...] = ("crm_read", "crm_manage")


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
    client_secret: str = "sandbox-secret"
    log_level: str = "warning"
    access_log: bool = False
