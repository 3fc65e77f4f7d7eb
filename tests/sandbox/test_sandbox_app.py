"""In-process checks of the ASGI app (admin loopback guard) and of the store and pagination."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from etbridge.sandbox import main
from etbridge.sandbox.admin import is_loopback
from etbridge.sandbox.app import create_app
from etbridge.sandbox.cli import parse_config
from etbridge.sandbox.config import SandboxConfig
from etbridge.sandbox.pagination import InvalidCursor, id_key, select, updated_cursor, updated_key
from etbridge.sandbox.store import Store
from tests.support.sandbox import Sandbox, SandboxError

with warnings.catch_warnings():
    # Starlette 1.x warns at import that it prefers httpx2 over httpx; not ours to fix.
    warnings.filterwarnings("ignore", message=".*httpx2", category=StarletteDeprecationWarning)
    from starlette.testclient import TestClient


@pytest.fixture
def app_client() -> Iterator[TestClient]:
    """An app driven in-process, seen from a public address."""
    app = create_app(SandboxConfig(orgs=1, bookings=5))
    with TestClient(app, client=("203.0.113.9", 50000)) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_admin/counters"),
        ("POST", "/_admin/reset"),
        ("POST", "/_admin/mutate"),
        ("GET", "/_admin/truth"),
        ("DELETE", "/_admin/orgs/1001"),
        ("GET", "/_admin/no-such-call"),
    ],
)
def test_admin_refuses_non_loopback_clients(app_client: TestClient, method: str, path: str) -> None:
    resp = app_client.request(method, path)
    assert resp.status_code == 403
    assert "loopback" in resp.json()["error"]


def test_public_api_answers_non_loopback_clients(app_client: TestClient) -> None:
    resp = app_client.post(
        "/oauth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
        },
    )
    assert resp.status_code == 200
    token = resp.json()["access_token"]
    orgs = app_client.get("/v2/organizations", headers={"Authorization": f"Bearer {token}"})
    assert orgs.status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_admin_accepts_loopback_clients(host: str) -> None:
    app = create_app(SandboxConfig(orgs=1, bookings=5))
    with TestClient(app, client=(host, 50000)) as client:
        assert client.get("/_admin/counters").status_code == 200
        entries = client.post("/_admin/mutate", json={"count": 2}).json()["mutations"]
        assert len(entries) == 2
        assert client.get("/_admin/no-such-call").status_code == 404


def test_is_loopback() -> None:
    assert is_loopback(("::ffff:127.0.0.1", 1))
    assert not is_loopback(("::ffff:10.0.0.1", 1))
    assert not is_loopback(("testclient", 1))
    assert not is_loopback(None)


def test_cli_parses_the_documented_flags() -> None:
    config = parse_config(
        ["--port", "0", "--orgs", "2", "--churn", "1.5", "--token-ttl", "2", "--rate-limit", "7"]
    )
    assert (config.port, config.orgs, config.churn, config.token_ttl) == (0, 2, 1.5, 2)
    assert config.rate_limit == 7 and config.host == "127.0.0.1"
    with pytest.raises(SystemExit):
        main(["--port", "0", "--token-ttl", "0"])


# --------------------------------------------------------------------------- store


def test_store_is_reproducible_with_a_fixed_clock() -> None:
    def build() -> Store:
        return Store(orgs=2, bookings=20, seed=5, clock=lambda: 1_800_000_000.0)

    first, second = build(), build()
    assert first.truth() == second.truth()
    assert first.mutate(30) == second.mutate(30)
    assert first.truth() == second.truth()
    assert Store(orgs=2, bookings=20, seed=6, clock=lambda: 1_800_000_000.0).truth() != (
        first.truth()
    )


def test_store_indexes_stay_consistent_under_mutation() -> None:
    now = [1_800_000_000.0]
    store = Store(orgs=2, bookings=30, seed=3, clock=lambda: now[0])
    for _ in range(50):
        now[0] += 0.4
        store.mutate(7)
    for org in store.orgs.values():
        assert org.ids == sorted(org.bookings)
        assert org.by_updated == sorted((b.updated_ts, b.id) for b in org.bookings.values())
        assert not set(org.deleted) & {str(i) for i in org.bookings}


# ---------------------------------------------------------------------- pagination


# No example database: it would leave a .hypothesis/ directory in the shared tree.
@settings(max_examples=150, deadline=None, database=None)
@given(
    keys=st.lists(st.integers(0, 60), unique=True, max_size=40).map(sorted),
    size=st.integers(1, 12),
    descending=st.booleans(),
    keep=st.integers(1, 3),
)
def test_select_walks_every_key_once_both_ways(
    keys: list[int], size: int, descending: bool, keep: int
) -> None:
    def accept(key: int) -> bool:
        return key % keep == 0

    expected = [k for k in (reversed(keys) if descending else keys) if accept(k)]
    forward: list[int] = []
    after = None
    while True:
        page = select(
            keys, descending=descending, after=after, before=None, size=size, accept=accept
        )
        assert len(page.keys) <= size
        forward += page.keys
        if not page.has_more:
            break
        after = page.keys[-1]
    assert forward == expected

    # Walking backwards starts from a position past the last key of the requested order.
    backward: list[int] = []
    before = -1 if descending else 10**9
    while True:
        page = select(
            keys, descending=descending, after=None, before=before, size=size, accept=accept
        )
        backward = page.keys + backward
        if not page.has_more:
            break
        before = page.keys[0]
    assert backward == expected


def test_cursors_are_opaque_keysets() -> None:
    key = (1_800_000_000, 100_123)
    assert updated_key(updated_cursor(key)) == key
    for bad in ("", "!!!", "bm90IGpzb24", "WzFd"):
        with pytest.raises(InvalidCursor):
            id_key(bad)
    with pytest.raises(InvalidCursor):
        updated_key("eyJpZCI6IjEwMDEifQ")  # an id cursor under sort=updated_at
    rng = random.Random(0)
    for _ in range(50):
        record = rng.randint(1, 10**9)
        assert id_key(updated_cursor((1_800_000_000, record))) == record


def test_helper_reports_a_sandbox_that_fails_to_start() -> None:
    with pytest.raises(SandboxError, match="unrecognized arguments: --bogus"):
        Sandbox.start(extra_args=["--bogus"])
