"""The sharing rule of the workers' slots among applications (etbridge/fairshare.py)."""

from __future__ import annotations

import itertools
import random

from etbridge.fairshare import fair_shares


def test_a_quiet_application_gets_all_it_asks_for_and_the_hot_one_the_rest() -> None:
    assert fair_shares(10, {"hot": 50, "quiet": 2, "idle": 0}) == {"hot": 8, "quiet": 2, "idle": 0}


def test_equal_shares_when_every_application_wants_more() -> None:
    assert fair_shares(9, {"a": 20, "b": 20, "c": 20}) == {"a": 3, "b": 3, "c": 3}


def test_what_one_does_not_use_is_passed_on_until_the_capacity_is_used() -> None:
    # Equal share 4; a needs 1, so b and c split 11; b needs 3, so c gets the rest.
    assert fair_shares(12, {"a": 1, "b": 3, "c": 30}) == {"a": 1, "b": 3, "c": 8}


def test_no_bound_or_plenty_gives_every_demand() -> None:
    demands = {"a": 5, "b": 0, "c": 7}
    assert fair_shares(None, demands) == demands
    assert fair_shares(100, demands) == demands


def test_the_remainder_rotates_with_start() -> None:
    demands = {"a": 9, "b": 9, "c": 9}
    got = [fair_shares(4, demands, start) for start in range(3)]
    assert got == [{"a": 2, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 1}, {"a": 1, "b": 1, "c": 2}]
    assert fair_shares(0, demands) == {"a": 0, "b": 0, "c": 0}
    assert fair_shares(-3, demands) == {"a": 0, "b": 0, "c": 0}
    assert fair_shares(5, {}) == {}


def test_max_min_fairness_on_random_demands() -> None:
    rng = random.Random(18)
    for _ in range(500):
        demands = {f"app{i}": rng.randint(0, 12) for i in range(rng.randint(1, 5))}
        capacity = rng.randint(0, 40)
        shares = fair_shares(capacity, demands, rng.randint(0, 9))
        assert sum(shares.values()) == min(capacity, sum(demands.values()))
        assert all(0 <= shares[a] <= demands[a] for a in demands)
        # Max-min: an application held below its demand has at least the share of
        # any other, give or take the one slot of the remainder.
        for a, b in itertools.permutations(demands, 2):
            if shares[a] < demands[a]:
                assert shares[a] >= shares[b] - 1
