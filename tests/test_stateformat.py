"""The fleet's state format mark against a real Redis: fresh installs, upgrades, the CLI."""

from __future__ import annotations

import redis

from etbridge import keys, state, stateformat


def test_a_fresh_redis_is_marked_with_its_first_org(r: redis.Redis) -> None:
    stateformat.forget()
    assert not stateformat.compat(r, keys.DEFAULT)  # nothing stored: nothing to keep compatible
    state.register_org(r, keys.DEFAULT, "1001")
    assert r.get(keys.DEFAULT.state_format) == stateformat.CURRENT
    stateformat.forget()
    assert not stateformat.compat(r, keys.DEFAULT)


def test_orgs_stored_by_an_older_version_keep_the_old_digests_until_finished(
    r: redis.Redis,
) -> None:
    r.hset(keys.DEFAULT.orgs, "1001", "{}")  # registered before this version: no mark
    state.register_org(r, keys.DEFAULT, "1002")  # a later registration does not mark it either
    assert r.get(keys.DEFAULT.state_format) is None
    stateformat.forget()
    assert stateformat.compat(r, keys.DEFAULT)
    r.hset(keys.DEFAULT.fingerprints("1001", "bookings"), "1", "ab")
    assert (
        stateformat.finish_upgrade(r, keys.DEFAULT, ["1001", "1002"], ["bookings"], settle=0) == 1
    )
    assert r.get(keys.DEFAULT.state_format) == stateformat.CURRENT
    assert not stateformat.compat(r, keys.DEFAULT)


def test_a_reading_is_kept_for_a_while_per_client(r: redis.Redis) -> None:
    r.hset(keys.DEFAULT.orgs, "1001", "{}")
    stateformat.forget()
    assert stateformat.compat(r, keys.DEFAULT)
    r.set(keys.DEFAULT.state_format, stateformat.CURRENT)  # another process finished the upgrade
    assert stateformat.compat(r, keys.DEFAULT)  # read again only after TTL seconds
    stateformat.forget()
    assert not stateformat.compat(r, keys.DEFAULT)
