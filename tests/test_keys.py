"""The Redis key layout: one prefix, no secrets, and one hash slot per atomic step."""

from __future__ import annotations

from redis.crc import key_slot

from etbridge import keys


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_every_key_has_the_prefix() -> None:
    made = [
        keys.token("c"),
        keys.token_lock("c"),
        keys.token_failure("c"),
        keys.budget("a"),
        keys.budget_pause("a"),
        keys.budget_pace("a"),
        keys.snapshots("1", "bookings"),
        keys.snapshot_dict("1", "bookings"),
        keys.fingerprints("1", "bookings"),
        keys.org_meta("1", "bookings"),
        keys.sweep_seen("1", "bookings"),
        keys.lease("1"),
        keys.fence("1"),
        keys.outbox("1"),
        keys.plan("1", "bookings"),
        keys.relay_partition("1", "s"),
        keys.relay_lock("1", "s"),
        keys.sink_state("s"),
        keys.dead_letters("s"),
        keys.PLAN_LOCK,
        keys.DISCOVERY,
        keys.RELAY_DUE,
        keys.RELAY_SWEEP,
        keys.ORGS,
    ]
    assert all(k.startswith(f"{keys.PREFIX}:") for k in made)
    assert len(set(made)) == len(made)


def test_the_page_commit_and_lease_keys_share_one_slot() -> None:
    """state.py's commit script touches these together (docs/page-commit.md)."""
    org = "1001"
    together = [
        keys.lease(org),
        keys.fence(org),
        keys.fingerprints(org, "bookings"),
        keys.snapshots(org, "bookings"),
        keys.snapshot_dict(org, "bookings"),
        keys.org_meta(org, "bookings"),
        keys.sweep_seen(org, "bookings"),
        keys.outbox(org),
        keys.plan(org, "bookings"),
        keys.relay_partition(org, "sink"),
        keys.relay_lock(org, "sink"),
    ]
    assert len({slot(k) for k in together}) == 1
    # ... and another org's keys are tagged differently.
    assert keys.org_tag("1002") not in keys.outbox(org)


def test_the_budget_keys_share_one_slot() -> None:
    """The acquire script touches all three (docs/ratelimit.md)."""
    app = keys.digest("client-id")
    assert len({slot(k(app)) for k in (keys.budget, keys.budget_pause, keys.budget_pace)}) == 1


def test_digest_is_stable_short_and_hides_its_parts() -> None:
    value = keys.digest("https://auth.example/oauth/token", "client-id", "crm_read")
    assert value == keys.digest("https://auth.example/oauth/token", "client-id", "crm_read")
    assert len(value) == 16 and all(c in "0123456789abcdef" for c in value)
    assert "client-id" not in keys.token(value)
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert keys.digest("ab", "c") != keys.digest("a", "bc")
