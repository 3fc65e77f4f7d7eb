"""Fixtures of the sandbox's own tests: one shared sandbox, reset before each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support.sandbox import Sandbox


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[Sandbox]:
    """One sandbox for the tests that need no special start-up flags.

    120 bookings per org so that 100-record pages still span several pages.
    """
    with Sandbox.start(orgs=3, bookings=120, seed=11, rate_limit=1_000_000) as sb:
        yield sb


@pytest.fixture
def sandbox(shared_sandbox: Sandbox) -> Sandbox:
    """The shared sandbox with counters at zero and faults and churn off.

    Data persists across tests, so tests read the truth they compare against themselves.
    """
    shared_sandbox.reset()
    return shared_sandbox


@pytest.fixture
def session_for(sandbox: Sandbox) -> Iterator[Callable[..., requests.Session]]:
    """Factory of API sessions (closed after the test): ``session_for(org="1001")``."""
    opened: list[requests.Session] = []

    def make(org: str | None = None, token: str | None = None) -> requests.Session:
        session = sandbox.api_session(org=org, token=token)
        opened.append(session)
        return session

    yield make
    for session in opened:
        session.close()
