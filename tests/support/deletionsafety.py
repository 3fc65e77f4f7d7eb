"""Helpers and fixtures of the deletion-safety tests (test_settlement, test_holds,
test_confirmations): a sandbox of two orgs, a runtime on it, the CLI as a subprocess.

A module uses the fixtures by name: ``sandbox = deletionsafety.sandbox``, ``rt = ...rt``.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from etbridge import changes, keys, status
from etbridge.poller import Poller
from etbridge.runtime import Runtime
from etbridge.state import OrgState
from tests.support.cli import run_cli
from tests.support.sandbox import Sandbox
from tests.support.stack import outbox_events, runtime_for

ORG = "1001"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=60, seed=13, rate_limit=100_000) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Iterator[Runtime]:
    sandbox.reset()
    runtime = runtime_for(sandbox, redis_url, orgs=[ORG, "1002"])
    yield runtime
    runtime.session.close()
    runtime.redis.close()


def poller(rt: Runtime) -> Poller:
    return Poller(rt.redis, rt.settings, rt.api)


def types(rt: Runtime, org: str = ORG) -> Counter[str]:
    return Counter(e["type"].rsplit(".", 1)[-1] for e in outbox_events(rt.redis, org))


def live_ids(sandbox: Sandbox, org: str = ORG) -> list[str]:
    return sorted(sandbox.truth(org)["orgs"][org]["bookings"], key=int)


def gets(sandbox: Sandbox, org: str = ORG) -> int:
    return int(sandbox.counters()["get_requests_by_org"].get(org, 0))


def cli(sandbox: Sandbox, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(sandbox, redis_url, *args, ETBRIDGE_ORGS=f"{ORG},1002")


def stored_equals_truth(rt: Runtime, sandbox: Sandbox) -> bool:
    state = OrgState(rt.redis, keys.DEFAULT, ORG, "bookings")
    truth = sandbox.truth(ORG)["orgs"][ORG]["bookings"]
    return state.records(sorted(state.stored_ids())) == {
        i: changes.canonical(r) for i, r in truth.items()
    }


def org_status(rt: Runtime, org: str = ORG) -> dict[str, Any]:
    doc: dict[str, Any] = status.collect(rt.redis, rt.settings)["orgs"][org]
    return doc


def listed_ids(rt: Runtime) -> set[str]:
    return {r["id"] for page in rt.api.pages(ORG) for r in page.data}
