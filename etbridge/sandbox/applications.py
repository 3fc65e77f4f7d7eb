"""The OAuth applications one sandbox serves, and which orgs each may see.

Without ``--app`` there is one application (``--client-id``/``--client-secret``)
that sees every org: the sandbox as it always was. With several, each has its
own credentials, orgs and request limit; a request whose token names no
application counts against the first one (the default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from etbridge.sandbox.config import AppSpec


class Applications:
    """Credentials and visible orgs per client id (the org sets grow with admin-added orgs)."""

    def __init__(self, specs: Sequence[AppSpec]) -> None:
        if not specs:
            raise ValueError("at least one application is needed")
        self.specs = {spec.client_id: spec for spec in specs}
        if len(self.specs) != len(specs):
            raise ValueError("two applications have the same client id")
        self.default = specs[0].client_id
        # None: every org, also those added later.
        self._orgs = {s.client_id: None if s.orgs is None else set(s.orgs) for s in specs}

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.specs

    def secrets(self) -> dict[str, str]:
        """``{client_id: client_secret}`` for the token endpoint."""
        return {cid: spec.client_secret for cid, spec in self.specs.items()}

    def limits(self, default: int) -> dict[str, int]:
        """Each application's requests per minute (its own, else ``default``)."""
        return {cid: spec.rate_limit or default for cid, spec in self.specs.items()}

    def sees(self, client_id: str, org_id: str) -> bool:
        """Whether the application may see (list, read) the org."""
        orgs = self._orgs.get(client_id, set())
        return orgs is None or org_id in orgs

    def grant(self, client_ids: Iterable[str], org_id: str) -> None:
        """Let these applications see ``org_id`` (an org added through the admin API)."""
        for client_id in client_ids:
            orgs = self._orgs[client_id]
            if orgs is not None:
                orgs.add(org_id)

    def as_dict(self, limits: dict[str, int]) -> dict[str, dict[str, object]]:
        """``{client_id: {"orgs": [ids] | null, "rate_limit": n}}`` (no secrets)."""
        return {
            cid: {
                "orgs": None if orgs is None else sorted(orgs, key=int),
                "rate_limit": limits[cid],
            }
            for cid, orgs in self._orgs.items()
        }
