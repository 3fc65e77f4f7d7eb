"""Deletion safety, decided: pure functions from what a sweep saw to what it may announce.

A booking missing from a complete listing is only a *candidate*. :func:`plan`
says whether the sweep's candidates are held by the mass-delete guard and
which of them to confirm with ``GET /v2/bookings/{id}`` (each, or a random
sample standing for all); :func:`decide` turns the answers into deletions,
refreshes (the listing lied), pending ids and held ids. The protocol, its
Redis keys and failure cases: docs/deletions.md.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

# Candidates up to this many are each confirmed; more are sampled.
CONFIRM_EACH_MAX = 10
# The sample that stands for all candidates when there are more.
SAMPLE_SIZE = 5


@dataclass(frozen=True)
class Guard:
    """Hold a sweep whose candidates exceed ``fraction`` of the stored records AND ``count``."""

    fraction: float = 0.2
    count: int = 10
    enabled: bool = True

    def exceeded(self, candidates: int, stored: int) -> bool:
        return (
            self.enabled and candidates > self.count and candidates > self.fraction * max(stored, 0)
        )

    def __str__(self) -> str:
        if not self.enabled:
            return "off"
        return f"{self.fraction * 100:g}%,{self.count}"


def parse_guard(text: str) -> Guard:
    """``ETBRIDGE_DELETE_GUARD``: ``P%,N`` (hold above P % of stored and above N), or ``off``.

    >>> parse_guard("20%,10")
    Guard(fraction=0.2, count=10, enabled=True)
    >>> parse_guard("5%,100").exceeded(101, 1000)
    True
    """
    raw = text.strip().lower()
    if raw in ("off", "none", "false", "0"):
        return Guard(enabled=False)
    share, sep, count = raw.partition(",")
    if not sep or not share.strip().endswith("%"):
        raise ValueError("expected PERCENT%,COUNT (e.g. 20%,10) or off")
    try:
        percent = float(share.strip()[:-1])
        number = int(count.strip())
    except ValueError:
        raise ValueError("expected PERCENT%,COUNT (e.g. 20%,10) or off") from None
    if not 0.0 <= percent <= 100.0 or number < 0:  # noqa: PLR2004  (a percentage)
        raise ValueError("the percent must be within 0..100 and the count >= 0")
    return Guard(fraction=percent / 100.0, count=number)


class HoldReason(enum.Enum):
    """Why a sweep's candidates are held instead of confirmed."""

    EMPTY_LISTING = "empty_listing"  # a 200 listing without records for an org with some
    GUARD = "guard"  # more candidates than ETBRIDGE_DELETE_GUARD allows


class Verdict(enum.Enum):
    """What ``GET /v2/bookings/{id}`` said about one candidate."""

    GONE = "gone"  # 404 or 410: confirmed deleted
    EXISTS = "exists"  # 200: the listing lied; the answer is the record
    UNKNOWN = "unknown"  # anything else (5xx, 429, timeout, no budget): ask next sweep


@dataclass(frozen=True)
class Plan:
    """What a sweep's end does before it decides: hold, or which ids to GET."""

    candidates: tuple[str, ...]
    hold: HoldReason | None = None
    approved: tuple[str, ...] = ()  # an operator approved these: deleted without a GET
    confirm: tuple[str, ...] = ()  # ids to GET
    sampled: bool = False  # ``confirm`` is a sample standing for every candidate


@dataclass(frozen=True)
class Outcome:
    """What a sweep's end commits."""

    delete: tuple[str, ...] = ()  # confirmed, extrapolated from a full sample, or approved
    refresh: tuple[str, ...] = ()  # the GET answered 200: store its record
    pending: tuple[str, ...] = ()  # unconfirmed: left for the next sweep
    held: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)  # outcome name -> ids (metrics)


def plan(
    candidates: Collection[str],
    *,
    stored: int,
    listed: int,
    guard: Guard,
    approved: Collection[str] = (),
    rng: random.Random | None = None,
    each_max: int = CONFIRM_EACH_MAX,
    sample: int = SAMPLE_SIZE,
) -> Plan:
    """Decide a sweep's candidates before any GET.

    ``stored`` is the number of stored records, ``listed`` the number the
    sweep's listing returned. Approved ids (an operator's ``deletions approve``)
    are deleted as they are; the guard and the confirmations apply to the rest.
    """
    ordered = tuple(sorted(candidates, key=_id_key))
    ok = frozenset(approved) & frozenset(ordered)
    rest = tuple(i for i in ordered if i not in ok)
    approved_ids = tuple(i for i in ordered if i in ok)
    if not rest:
        return Plan(ordered, approved=approved_ids)
    if listed == 0 and stored > 0:
        return Plan(ordered, hold=HoldReason.EMPTY_LISTING, approved=approved_ids)
    if guard.exceeded(len(rest), stored):
        return Plan(ordered, hold=HoldReason.GUARD, approved=approved_ids)
    if len(rest) <= each_max:
        return Plan(ordered, approved=approved_ids, confirm=rest)
    # A spot-check sample, not a secret: nothing is gained by predicting it.
    picked = (rng or random.Random()).sample(rest, min(sample, len(rest)))  # noqa: S311
    return Plan(
        ordered, approved=approved_ids, confirm=tuple(sorted(picked, key=_id_key)), sampled=True
    )


def decide(p: Plan, verdicts: Mapping[str, Verdict]) -> Outcome:
    """The sweep's outcome from the plan and the GETs' verdicts (a missing verdict: unknown)."""
    asked = {i: verdicts.get(i, Verdict.UNKNOWN) for i in p.confirm}
    gone = [i for i, v in asked.items() if v is Verdict.GONE]
    refresh = tuple(i for i, v in asked.items() if v is Verdict.EXISTS)
    counts: dict[str, int] = {}
    if p.approved:
        counts["approved"] = len(p.approved)
    if p.hold is not None:
        held = tuple(i for i in p.candidates if i not in set(p.approved))
        counts["held"] = len(held)
        return Outcome(delete=p.approved, held=held, counts=counts)
    others = [i for i in p.candidates if i not in asked and i not in set(p.approved)]
    extrapolated: list[str] = []
    if p.sampled and asked and len(gone) == len(asked):
        # Every sampled one is confirmed gone: the verdict holds for the rest.
        extrapolated = others
        others = []
    pending = tuple(
        sorted([*others, *(i for i, v in asked.items() if v is Verdict.UNKNOWN)], key=_id_key)
    )
    delete = tuple(sorted([*p.approved, *gone, *extrapolated], key=_id_key))
    for name, n in (
        ("confirmed", len(gone)),
        ("extrapolated", len(extrapolated)),
        ("listing_lied", len(refresh)),
        ("pending", len(pending)),
    ):
        if n:
            counts[name] = n
    return Outcome(delete=delete, refresh=refresh, pending=pending, counts=counts)


def _id_key(rid: str) -> tuple[int, str]:
    # Numeric ids in numeric order, any other after them, both stable.
    return (0, f"{int(rid):020d}") if rid.isdigit() else (1, rid)


def ordered(ids: Sequence[str]) -> list[str]:
    """Ids in the order the module reports them (numeric ids numerically)."""
    return sorted(ids, key=_id_key)
