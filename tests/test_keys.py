"""The Redis key layout: today's keys kept, one prefix per application, no secrets, and
one hash slot per atomic step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.crc import key_slot

from etbridge import keys
from etbridge.keys import Keyspace


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


# Every key kind, built the same way in any keyspace; the pair is (kind, key in
# the single application's keyspace), spelled out so that any change shows here.
KINDS: list[tuple[Callable[[Keyspace], str], str]] = [
    (lambda ks: ks.token("c"), "etb:token:c"),
    (lambda ks: ks.token_lock("c"), "etb:token:c:lock"),
    (lambda ks: ks.token_failure("c"), "etb:token:c:failure"),
    (lambda ks: ks.budget("a"), "etb:budget:{a}"),
    (lambda ks: ks.budget_pause("a"), "etb:budget:{a}:pause"),
    (lambda ks: ks.budget_pace("a"), "etb:budget:{a}:pace"),
    (lambda ks: ks.snapshots("1", "bookings"), "etb:{org:1}:snap:bookings"),
    (lambda ks: ks.snapshot_dict("1", "bookings"), "etb:{org:1}:zdict:bookings"),
    (lambda ks: ks.fingerprints("1", "bookings"), "etb:{org:1}:fp:bookings"),
    (lambda ks: ks.org_meta("1", "bookings"), "etb:{org:1}:meta:bookings"),
    (lambda ks: ks.sweep_seen("1", "bookings"), "etb:{org:1}:seen:bookings"),
    (lambda ks: ks.deletion_hold("1", "bookings"), "etb:{org:1}:delhold:bookings"),
    (lambda ks: ks.lease("1"), "etb:{org:1}:lease"),
    (lambda ks: ks.fence("1"), "etb:{org:1}:fence"),
    (lambda ks: ks.outbox("1"), "etb:{org:1}:outbox"),
    (lambda ks: ks.plan("1", "bookings"), "etb:{org:1}:plan:bookings"),
    (lambda ks: ks.plan_summary, "etb:plan:summary"),
    (lambda ks: ks.plan_sends, "etb:plan:sends"),
    (lambda ks: ks.plan_cursor, "etb:plan:cursor"),
    (lambda ks: ks.plan_delays, "etb:plan:delays"),
    (lambda ks: ks.plan_started, "etb:plan:started"),
    (lambda ks: ks.plan_workers, "etb:plan:workers"),
    (lambda ks: ks.plan_lock, "etb:plan:lock"),
    (lambda ks: ks.discovery, "etb:discovery"),
    (lambda ks: ks.relay_partition("1", "s"), "etb:{org:1}:relay:s"),
    (lambda ks: ks.relay_lock("1", "s"), "etb:{org:1}:relay:s:lock"),
    (lambda ks: ks.relay_due, "etb:relay:due"),
    (lambda ks: ks.relay_sweep, "etb:relay:sweep"),
    (lambda ks: ks.relay_retry, "etb:relay:retry"),
    (lambda ks: ks.orgs, "etb:orgs"),
    (lambda ks: ks.state_format, "etb:state:format"),
    (lambda ks: ks.sink_state("s"), "etb:sink:s"),
    (lambda ks: ks.dead_letters("s"), "etb:sink:s:dlq"),
    (lambda ks: ks.sink_pace("s"), "etb:sink:s:pace"),
    (lambda ks: ks.attempt_log("1", "s", 20000), "etb:{org:1}:attempts:s:20000"),
]
ACME = Keyspace("acme")


def test_the_single_application_keeps_every_key_of_before() -> None:
    """No apps file: existing Redis data and the contract's keys stay valid."""
    assert [kind(keys.DEFAULT) for kind, _ in KINDS] == [today for _, today in KINDS]
    assert Keyspace() == Keyspace(None) == keys.DEFAULT
    assert keys.DEFAULT.pattern == "etb:*"


def test_every_key_kind_is_listed() -> None:
    """A key added to Keyspace without a line in KINDS fails here."""
    builders = {
        name
        for name in dir(Keyspace)
        if not name.startswith("_") and name not in ("app", "prefix", "pattern")
    }
    listed = {today for _, today in KINDS}
    assert len(listed) == len(KINDS) == len(builders)


def test_an_application_prefixes_every_key_and_keeps_its_hash_tag() -> None:
    for kind, today in KINDS:
        key = kind(ACME)
        assert key == "etb:app:acme:" + today.removeprefix("etb:")
        # The same hash tag ({org:ID}, {APPID}) as the single application's key.
        assert slot(key) == slot(today) or "{" not in today
    assert ACME.pattern == "etb:app:acme:*"
    made = [kind(ks) for kind, _ in KINDS for ks in (keys.DEFAULT, ACME, Keyspace("globex"))]
    assert len(set(made)) == len(made)  # no key of one keyspace is another's


@pytest.mark.parametrize("name", ["", "Acme", "a:b", "a{b}", "1abc", "a" * 41, "a b"])
def test_an_application_name_that_would_break_a_key_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not an application name"):
        Keyspace(name)


@pytest.mark.parametrize("ks", [keys.DEFAULT, ACME], ids=["default", "app"])
def test_the_page_commit_and_lease_keys_share_one_slot(ks: Keyspace) -> None:
    """state.py's commit script touches these together (docs/page-commit.md)."""
    org = "1001"
    together = [
        ks.lease(org),
        ks.fence(org),
        ks.fingerprints(org, "bookings"),
        ks.snapshots(org, "bookings"),
        ks.snapshot_dict(org, "bookings"),
        ks.org_meta(org, "bookings"),
        ks.sweep_seen(org, "bookings"),
        ks.outbox(org),
        ks.plan(org, "bookings"),
        ks.relay_partition(org, "sink"),
        ks.relay_lock(org, "sink"),
        ks.attempt_log(org, "sink", 1),
    ]
    assert len({slot(k) for k in together}) == 1
    # ... and another org's keys are tagged differently.
    assert keys.org_tag("1002") not in ks.outbox(org)


@pytest.mark.parametrize("ks", [keys.DEFAULT, ACME], ids=["default", "app"])
def test_the_budget_keys_share_one_slot(ks: Keyspace) -> None:
    """The acquire script touches all three (docs/ratelimit.md)."""
    app = keys.digest("client-id")
    assert len({slot(k(app)) for k in (ks.budget, ks.budget_pause, ks.budget_pace)}) == 1


def test_digest_is_stable_short_and_hides_its_parts() -> None:
    value = keys.digest("https://auth.example/oauth/token", "client-id", "crm_read")
    assert value == keys.digest("https://auth.example/oauth/token", "client-id", "crm_read")
    assert len(value) == 16 and all(c in "0123456789abcdef" for c in value)
    assert "client-id" not in keys.DEFAULT.token(value)
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert keys.digest("ab", "c") != keys.digest("a", "bc")
