"""Two applications on one Redis database poll the same org id without sharing a key.

Issue 18: each application of the apps file has its own keyspace
(``etb:app:<name>:…``). Two sandbox applications see org 1001; a runtime of
each (built from ``AppConfig.settings``) polls it, commits its own state and
outbox, and delivers to its own sink; a poll of one touches no key of the
other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from etbridge import keys, state
from etbridge.runtime import Runtime
from etbridge.settings import load_settings
from tests.support.replies import stream_events
from tests.support.sandbox import Sandbox, SandboxApp

ORG = "1001"
ALPHA = SandboxApp("alpha-client", "alpha-secret", orgs=(ORG,))
BETA = SandboxApp("beta-client", "beta-secret", orgs=(ORG, "1002"))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(orgs=2, bookings=6, rate_limit=1000, apps=[ALPHA, BETA]) as sb:
        yield sb


def runtimes(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> tuple[Runtime, Runtime]:
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text(
        "".join(
            f'[apps.{name}]\nclient_id = "{app.client_id}"\nclient_secret = "{app.client_secret}"\n'
            f'api_url = "{sandbox.url}"\norgs = ["{ORG}"]\nsinks = "redis-stream:{name}:events"\n'
            for name, app in (("alpha", ALPHA), ("beta", BETA))
        )
    )
    base = load_settings(
        client_id=sandbox.client_id,
        client_secret=sandbox.client_secret,
        api_url=sandbox.url,
        redis_url=redis_url,
        apps_file=str(apps_file),
        sentry_dsn=None,
    )
    alpha, beta = (Runtime(app.settings(base)) for app in base.apps())
    return alpha, beta


def etb_keys(client: redis.Redis) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=keys.DEFAULT.pattern, count=1000)}


def dump(client: redis.Redis, ks: keys.Keyspace) -> dict[str, bytes | None]:
    """Every key of a keyspace with its serialized value (DUMP): what a poll may change."""
    found = sorted(k.decode() for k in client.scan_iter(match=ks.pattern, count=1000))
    return {k: client.dump(k) for k in found}


def poll_and_deliver(rt: Runtime) -> None:
    state.register_org(rt.redis, rt.keyspace, ORG)  # as the planner does
    rt.poller().poll(ORG)
    result = rt.relay.deliver(ORG, rt.settings.sinks[0].name)
    assert result.error is None, result


def test_two_applications_poll_one_org_id_in_their_own_keyspaces(
    sandbox: Sandbox, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    sandbox.reset()
    alpha, beta = runtimes(sandbox, redis_url, tmp_path)
    assert (alpha.keyspace, beta.keyspace) == (keys.Keyspace("alpha"), keys.Keyspace("beta"))

    poll_and_deliver(alpha)  # the baseline
    written = etb_keys(r)
    assert written and all(k.startswith("etb:app:alpha:") for k in written), written
    assert alpha.keyspace.snapshots(ORG, "bookings") in written
    assert alpha.keyspace.token(alpha.tokens.cache_id) in written

    poll_and_deliver(beta)  # its own baseline of the same org id, from nothing
    assert r.hlen(beta.keyspace.snapshots(ORG, "bookings")) == 6
    assert {k for k in etb_keys(r) if not k.startswith("etb:app:alpha:")} == set(
        dump(r, beta.keyspace)
    )

    # A change: alpha's poll commits and delivers it without touching a key of beta.
    (change,) = sandbox.mutate(1, org=ORG, kinds=["update"])
    before_beta = dump(r, beta.keyspace)
    poll_and_deliver(alpha)
    assert dump(r, beta.keyspace) == before_beta
    (event,) = stream_events(r, alpha.keyspace.outbox(ORG))
    assert event["subject"] == str(change["id"])
    assert stream_events(r, beta.keyspace.outbox(ORG)) == []
    assert [e["id"] for e in stream_events(r, "alpha:events")] == [event["id"]]

    # ... and beta's poll finds the same change for itself, leaving alpha's keys alone.
    before_alpha = dump(r, alpha.keyspace)
    poll_and_deliver(beta)
    assert dump(r, alpha.keyspace) == before_alpha
    (beta_event,) = stream_events(r, beta.keyspace.outbox(ORG))
    assert beta_event["subject"] == event["subject"]
    assert [e["id"] for e in stream_events(r, "beta:events")] == [beta_event["id"]]

    # Every key either application wrote lies under its prefix; none in the default's.
    every = etb_keys(r)
    assert every == set(dump(r, alpha.keyspace)) | set(dump(r, beta.keyspace))
    for name, ks in (("alpha", alpha.keyspace), ("beta", beta.keyspace)):
        assert state.known_orgs(r, ks).keys() == {ORG}
        assert r.exists(ks.budget(keys.digest(f"{name}-client")))
    assert not r.exists(keys.DEFAULT.orgs, keys.DEFAULT.outbox(ORG))
