"""The pure decisions of deletion safety (etbridge/deletions.py)."""

from __future__ import annotations

import random

import pytest

from etbridge.deletions import (
    Guard,
    HoldReason,
    Verdict,
    decide,
    parse_guard,
    plan,
)
from etbridge.settings import SettingsError, load_settings

GUARD = Guard()  # 20 %, 10
IDS = [str(100000 + n) for n in range(40)]


@pytest.mark.parametrize(
    ("text", "guard"),
    [
        ("20%,10", Guard(0.2, 10)),
        (" 5% , 100 ", Guard(0.05, 100)),
        ("100%,0", Guard(1.0, 0)),
        ("off", Guard(enabled=False)),
    ],
)
def test_parse_guard(text: str, guard: Guard) -> None:
    assert parse_guard(text) == guard


@pytest.mark.parametrize("text", ["20", "20,10", "%,10", "20%", "20%,x", "120%,1", "20%,-1"])
def test_parse_guard_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"PERCENT%,COUNT|percent must be within"):
        parse_guard(text)


def test_guard_needs_both_the_share_and_the_count() -> None:
    assert not GUARD.exceeded(10, 20)  # 50 % but not more than 10
    assert not GUARD.exceeded(11, 100)  # more than 10 but 11 %
    assert GUARD.exceeded(11, 50)
    assert not Guard(enabled=False).exceeded(10_000, 10_000)


def test_few_candidates_are_each_confirmed() -> None:
    p = plan(IDS[:3], stored=100, listed=97, guard=GUARD)
    assert p.hold is None and not p.sampled
    assert p.confirm == tuple(IDS[:3])
    out = decide(p, {IDS[0]: Verdict.GONE, IDS[1]: Verdict.EXISTS, IDS[2]: Verdict.UNKNOWN})
    assert out.delete == (IDS[0],)
    assert out.refresh == (IDS[1],)
    assert out.pending == (IDS[2],)
    assert out.counts == {"confirmed": 1, "listing_lied": 1, "pending": 1}


def test_an_empty_listing_of_an_org_with_bookings_is_always_held() -> None:
    p = plan(IDS[:2], stored=2, listed=0, guard=Guard(enabled=False))
    assert p.hold is HoldReason.EMPTY_LISTING and p.confirm == ()
    out = decide(p, {})
    assert out.delete == () and out.held == tuple(IDS[:2])


def test_more_than_the_guard_is_held_without_a_request() -> None:
    p = plan(IDS[:30], stored=100, listed=70, guard=GUARD)
    assert p.hold is HoldReason.GUARD and p.confirm == ()
    out = decide(p, {})
    assert out.held == tuple(IDS[:30]) and out.delete == () and out.counts == {"held": 30}


def test_approved_ids_are_deleted_and_the_rest_is_planned_anew() -> None:
    p = plan(IDS[:30], stored=100, listed=70, guard=GUARD, approved=[*IDS[:28], "999"])
    assert p.hold is None
    assert p.approved == tuple(IDS[:28])  # an approved id that came back is not deleted
    assert p.confirm == tuple(IDS[28:30])
    out = decide(p, {IDS[28]: Verdict.GONE, IDS[29]: Verdict.GONE})
    assert out.delete == tuple(IDS[:30])
    assert out.counts == {"approved": 28, "confirmed": 2}


def test_many_candidates_are_sampled_and_the_verdict_extends_only_when_all_agree() -> None:
    p = plan(IDS, stored=10_000, listed=9_960, guard=GUARD, rng=random.Random(3))
    assert p.sampled and len(p.confirm) == 5 and set(p.confirm) <= set(IDS)
    all_gone = decide(p, dict.fromkeys(p.confirm, Verdict.GONE))
    assert all_gone.delete == tuple(IDS) and all_gone.pending == ()
    assert all_gone.counts == {"confirmed": 5, "extrapolated": 35}
    verdicts = dict.fromkeys(p.confirm, Verdict.GONE)
    verdicts[p.confirm[0]] = Verdict.EXISTS
    one_lie = decide(p, verdicts)
    assert one_lie.delete == p.confirm[1:]  # each confirmed one still goes
    assert one_lie.refresh == (p.confirm[0],)
    assert len(one_lie.pending) == 35
    verdicts[p.confirm[0]] = Verdict.UNKNOWN
    unknown = decide(p, verdicts)
    assert len(unknown.delete) == 4 and len(unknown.pending) == 36


def test_samples_differ_between_sweeps() -> None:
    picks = {plan(IDS, stored=10_000, listed=1, guard=GUARD).confirm for _ in range(20)}
    assert len(picks) > 1


def test_the_setting_is_read_and_a_bad_one_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETBRIDGE_CLIENT_ID", "id")
    monkeypatch.setenv("ETBRIDGE_CLIENT_SECRET", "secret")
    assert load_settings().delete_guard == Guard(0.2, 10)
    monkeypatch.setenv("ETBRIDGE_DELETE_GUARD", "5%,100")
    assert load_settings().delete_guard == Guard(0.05, 100)
    monkeypatch.setenv("ETBRIDGE_DELETE_GUARD", "lots")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message and "ETBRIDGE_DELETE_GUARD" in message and "20%,10" in message
