"""Which polls and sweep pages to send now: earliest deadline first, paced to the budget.

Pure. The allocation (allocation.py) gives every (org, resource) unit a poll
rate ``f`` and a sweep rate ``g``; here each unit's next incremental poll is
due at ``last due + 1/f`` and its next sweep at ``last due + 1/g``, whose
pages then follow each other. Each tick dispatches what may be sent before
the next, earliest deadline first, each with a send time spaced by the
budget's pace and at most a little before its deadline (a free slot filled
early), so nothing is queued that cannot get a request at once. The estimates
the allocation needs (change and deletion rates, pages) are decayed counts
(:class:`RateEstimate`). See docs/scheduling.md.
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from etbridge.allocation import Allocation, Demand, Limits, Rates, allocate_columns

if TYPE_CHECKING:
    from etbridge.settings import Settings

Mode = Literal["incremental", "sweep"]
UnitKey = tuple[str, str]  # (org_id, resource)

# Estimates forget with this half-life: long enough to smooth Poisson noise,
# short enough to follow an org that turns busy within minutes.
HALF_LIFE = 300.0
# Priors, as if this much had been seen fleet-wide before the first poll: one
# change in ten minutes, and a tenth of a deletion per ETBRIDGE_SWEEP_INTERVAL
# (the interval the operator chose says how often deletions are worth a look).
# Data outweighs them within minutes; the shrinkage below spreads what the
# first units learn to the others.
CHANGE_PRIOR = (0.5, 300.0)
DELETE_PRIOR_EVENTS = 0.1
# Seconds at the fleet's mean rate that every unit's own estimate starts from.
PSEUDO_SECONDS = 10.0
# The budget's window: the API's 60 s plus the limiter's safety margin.
BUDGET_WINDOW = 61.0
# Worker capacity (see Workers): seconds of the workers' measured start rate
# that may wait, beyond the lookahead's timed sends, for a worker to take it...
QUEUE_SECONDS = 0.5
# ...and polls that may always wait, whatever was measured: a fleet's first
# tick, and an idle fleet whose start rate is only what it was given.
MIN_WAITING = 8
# Half-life (seconds) of the measured start rate when it falls; a rise counts at once.
STARTED_HALF_LIFE = 2.0


class Reason(enum.StrEnum):
    BASELINE = "baseline"  # the unit's first listing: nothing of it is watched before
    RESYNC = "resync"  # an operator asked, or a sweep must run to its end first
    SWEEP = "sweep"  # the first page of a periodic sweep (deletion detection)
    SWEEP_PAGE = "sweep_page"  # the next page of a sweep under way
    POLL = "poll"  # the next incremental poll


# Read through the class, an enum member costs 0.1 µs (Python 3.11): too much
# for the loop over every unit in each tick.
_POLL, _SWEEP = Reason.POLL, Reason.SWEEP


@dataclass(frozen=True, slots=True)
class RateEstimate:
    """A decayed count of events over a decayed span of time."""

    events: float = 0.0
    seconds: float = 0.0
    at: float | None = None

    def observe(self, count: float, now: float) -> RateEstimate:
        if self.at is None:
            # The first observation only starts the clock: what it found came in a
            # span nobody measured (since a baseline by a tool, or an upgrade), and
            # counted over no time at all it would read as a burst that sets the
            # allocation swinging until it decays.
            return RateEstimate(0.0, 0.0, now)
        elapsed = max(0.0, now - self.at)
        keep = math.pow(0.5, elapsed / HALF_LIFE)
        return RateEstimate(self.events * keep + count, self.seconds * keep + elapsed, now)

    def rate(self, prior: tuple[float, float]) -> float:
        return (self.events + prior[0]) / (self.seconds + prior[1])


@dataclass(frozen=True, slots=True)
class UnitView:
    """What the planner knows of one (org, resource), gathered from Redis by planner.py."""

    org_id: str
    resource: str
    busy: bool = False  # the org has a poll queued or running (one lease per org)
    queued: bool = False  # this unit's poll is queued and has not started yet
    retry_at: float = 0.0  # backoff after a failed poll
    baselined: bool = False
    urgent_sweep: bool = False  # a resync was asked for
    sweeping: bool = False  # a sweep is under way (its cursor saved)
    sweeps_only: bool = False  # the API rejects the incremental filter
    last_poll_due: float | None = None  # deadline of the last incremental poll dispatched
    last_sweep_due: float | None = None  # deadline of the last sweep's first page
    last_listed: float | None = None  # end of the unit's last complete listing (any caller)
    changes: RateEstimate = RateEstimate()
    deletions: RateEstimate = RateEstimate()
    poll_pages: float = 1.0  # pages of an incremental poll (running average)
    sweep_pages: float = 1.0  # pages of a complete sweep
    first_seen: float | None = None  # when the planner first saw it without a baseline

    @property
    def key(self) -> UnitKey:
        return (self.org_id, self.resource)


@dataclass(frozen=True)
class Budget:
    limit: int  # requests per 60 s, fleet-wide
    used: int  # requests granted in the last window
    inflight: float = 0.0  # expected requests of polls queued and not started
    freeing: int = 0  # grants that leave the window within the lookahead
    next_send: float = 0.0  # the earliest send time the last dispatch left free
    paused_for: float = 0.0  # seconds left of a 429 pause
    slots: int | None = None  # polls the workers can take this tick (None: no bound)


@dataclass(frozen=True)
class Workers:
    """What the workers can take: polls started a second, and polls waiting to start.

    A budget far above what the workers poll would otherwise have every tick
    queue every due unit: the broker's queue grows by what the workers cannot
    take, each poll waits in it for many seconds, and a wait longer than the
    queued mark's lifetime (planstore.QUEUED_TTL) queues the unit a second time.
    """

    started: float | None = None  # polls started a second, fleet-wide (None: unmeasured)
    waiting: int = 0  # polls dispatched and not started (timed sends and the broker's queue)


@dataclass(frozen=True)
class PlanConfig:
    poll_interval: float = 30.0
    sweep_interval: float = 3600.0
    tick: float = 1.0  # seconds between two dispatches (beat's schedule)
    # Seconds ahead a tick sends: two ticks, so a tick that runs late or not at
    # all (a busy worker, a beat restart) delays no poll.
    lookahead: float = 2.0
    # Kept back from the allocation, as a share of the budget. None by default:
    # deletion confirmations are kept back by their expected rate (see limits),
    # the other requests outside the plan are rare (discovery, a planned poll's
    # one retry, an operator's check), and when one comes the next planned send
    # waits for the budget's slot and counts its next deadline from that late
    # send, so nothing piles up; while every percent kept back lengthens the
    # cycle by a percent (under uniform churn, round-robin's p99 by as much).
    reserve: float = 0.0
    floor_cycles: float = 1.25
    # How far before its deadline a poll or sweep may be sent: this many paces
    # of the budget, or this share of its interval if that is more (see _early).
    early_paces: float = 2.0
    early_share: float = 0.3
    early_max: float = 15.0  # seconds

    @classmethod
    def from_settings(cls, settings: Settings, tick: float) -> PlanConfig:
        return cls(
            poll_interval=settings.poll_interval,
            sweep_interval=settings.sweep_interval,
            tick=tick,
            lookahead=2 * tick,
        )

    def limits(self, limit: int, confirmations: float = 0.0) -> Limits:
        """The allocation's bounds; ``confirmations``: GETs a second that deletions will cost.

        Each deletion a sweep finds is confirmed by one GET (docs/deletions.md),
        outside any poll or sweep: under a tight budget with frequent deletions
        they are a fifth of it, and left unplanned they would take the slots the
        planned polls were paced into. At most half the budget is kept for them.
        """
        rate = limit / BUDGET_WINDOW * (1.0 - self.reserve)
        return Limits(
            rate=rate - min(max(0.0, confirmations), rate / 2),
            poll_interval=self.poll_interval,
            sweep_interval=self.sweep_interval,
            floor_cycles=self.floor_cycles,
        )


@dataclass(frozen=True)
class Decision:
    org_id: str
    resource: str
    mode: Mode
    reason: Reason
    due: float  # the deadline the allocation set
    send_at: float  # when to start it: spaced by the budget's pace, at most `early` before due
    early: float = 0.0  # how far before its deadline it may be sent

    @property
    def anchor(self) -> float:
        """Where the unit's next deadline counts from: the deadline, or the send time if later.

        A poll sent early keeps its grid (the allocation's rate stands); one sent
        late counts from its send: where several units fell due at once, the pace
        spread their sends, and counting from them keeps them spread.
        """
        return self.send_at if self.send_at > self.due else self.due


def shrunk_rates(estimates: Sequence[RateEstimate], prior: tuple[float, float]) -> list[float]:
    """Each unit's rate, shrunk towards the fleet's mean as far as the data allow.

    Empirical Bayes (gamma-Poisson, method of moments): a unit's raw rate
    ``n/t`` carries Poisson noise of variance ``m/t`` around its true rate; the
    spread of the true rates across units, ``τ²``, is what the observed spread
    has beyond that noise. Each unit keeps the weight ``τ²/(τ² + m/t)`` on its
    own rate and gives the rest to the mean ``m``. Under uniform churn ``τ²`` is
    about 0, every unit gets ``m`` and the allocation is round-robin, instead
    of chasing noise; under skewed churn ``τ²`` is large and rates stand.
    """
    if not estimates:
        return []
    n = len(estimates)
    events = sum([e.events for e in estimates]) + prior[0]
    seconds = sum([e.seconds for e in estimates]) + prior[1]
    mean = events / seconds
    # Each unit's own rate, with a few seconds at the mean so that a new unit has
    # one (RateEstimate.rate, inlined: this runs for every unit on every allocation).
    exposure = [e.seconds + PSEUDO_SECONDS for e in estimates]
    pseudo_events = mean * PSEUDO_SECONDS
    raw = [(e.events + pseudo_events) / t for e, t in zip(estimates, exposure, strict=True)]
    noise = [mean / t for t in exposure]
    spread = sum([(r - mean) ** 2 for r in raw]) / n
    # The spread that noise alone gives, with two standard errors of margin: only
    # a spread the noise cannot explain moves a unit away from the mean.
    expected = sum(noise) / n * (1 + 2 * math.sqrt(2 / n))
    tau2 = max(0.0, spread - expected)
    if tau2 == 0:
        return [mean] * n
    return [mean + (tau2 / (tau2 + v)) * (r - mean) for r, v in zip(raw, noise, strict=True)]


Columns = tuple[
    list[UnitKey], list[float], list[float], list[float], list[float], list[float | None]
]


def _columns(units: Sequence[UnitView], config: PlanConfig) -> tuple[Columns, float]:
    """The allocation's inputs, one list per field of :class:`Demand`, and the
    deletions a second (each costs a confirmation GET).

    A unit polled by sweeps only folds its changes into its deletions, and may be
    swept as often as it would be polled.
    """
    changes = shrunk_rates([u.changes for u in units], CHANGE_PRIOR)
    delete_prior = (DELETE_PRIOR_EVENTS, config.sweep_interval)
    deletions = shrunk_rates([u.deletions for u in units], delete_prior)
    only = [u.sweeps_only for u in units]
    ceiling = 1.0 / max(config.poll_interval, 1e-6)
    columns = (
        [(u.org_id, u.resource) for u in units],
        [0.0 if s else c for s, c in zip(only, changes, strict=True)],
        [c + d if s else d for s, c, d in zip(only, changes, deletions, strict=True)],
        [0.0 if u.sweeps_only else u.poll_pages if u.poll_pages > 1.0 else 1.0 for u in units],
        [u.sweep_pages for u in units],
        [ceiling if s else None for s in only],
    )
    return columns, math.fsum(deletions)


def demands(units: Sequence[UnitView], config: PlanConfig) -> list[Demand]:
    """The allocation's inputs: a unit polled by sweeps only folds its changes into them."""
    return list(map(Demand, *_columns(units, config)[0]))


def limits(units: Sequence[UnitView], limit: int, config: PlanConfig) -> Limits:
    """The allocation's bounds for these units: the budget less their confirmations."""
    return config.limits(limit, _columns(units, config)[1])


def plan_rates(units: Sequence[UnitView], limit: int, config: PlanConfig) -> Allocation:
    # Columns straight into the allocation: no Demand tuple per unit.
    columns, confirmations = _columns(units, config)
    return allocate_columns(*columns, config.limits(limit, confirmations))


def _phase(unit: UnitView, now: float, gap: float) -> float:
    """A unit's first deadline: the latest point, not after now, of its own grid.

    The grid's step is the unit's interval and its phase comes from the unit's
    name, so it is stable from tick to tick: units that start together (a
    fleet's first minute, a batch of new orgs) are served in phase order, not
    all at once, and a unit that waits is due, not pushed to the next point.
    """
    phase = gap * (zlib.crc32(f"{unit.org_id}\x1f{unit.resource}".encode()) / 2**32)
    return phase + math.floor((now - phase) / gap) * gap


def _next(
    unit: UnitView, rates: Rates | None, now: float, config: PlanConfig
) -> tuple[float, Mode, Reason, float] | None:
    """The unit's next deadline, or None while it has nothing to do.

    The deadline of a unit more than one interval behind is moved up to
    ``now - interval`` (no burst to catch up); the last item is the deadline
    before that move, the order among units: when the workers, not the budget,
    bind, the units that waited longest go first, none starves.
    """
    # Called for every unit near its deadline on every tick: the enum members are
    # read once (_POLL, _SWEEP), the clamps are conditionals.
    if not unit.baselined:
        # Ordered by how long it has waited for its baseline: behind the polls that
        # fell due before it was seen, never behind every poll (the workers may bind).
        seen = unit.first_seen
        return (now, "sweep", Reason.BASELINE, now if seen is None else min(now, seen))
    if unit.urgent_sweep:
        return (now, "sweep", Reason.RESYNC, now)
    if rates is None:
        return None
    best: tuple[float, Mode, Reason, float] | None = None
    poll, sweep = rates
    if poll > 0 and not unit.sweeps_only:
        gap = max(1.0 / poll, config.poll_interval)
        last = unit.last_poll_due
        due = _phase(unit, now, gap) if last is None else last + gap
        # A unit not polled by the planner yet is due on its grid (units that start
        # together are spread), but it waited since its last listing: that orders it.
        order = due if last is not None or unit.last_listed is None else unit.last_listed + gap
        order = min(order, due)
        best = (due if due >= now - gap else now - gap, "incremental", _POLL, order)
    if unit.sweeping:
        # A sweep's pages follow each other: a deletion is seen when the listing
        # that began after it ends, so a sweep spread over its cycle would make
        # deletions wait up to two cycles; back to back, one cycle at the most.
        # So the next page goes before the unit's own poll, and among the units
        # it is ordered by its sweep's deadline: a sweep under way ends first.
        started = unit.last_sweep_due
        return (now, "sweep", Reason.SWEEP_PAGE, now if started is None else min(now, started))
    if sweep > 0:
        gap = 1.0 / sweep
        last = unit.last_sweep_due
        due = _phase(unit, now, gap) if last is None else last + gap
        clamped = due if due >= now - gap else now - gap
        if best is None or clamped < best[0]:
            best = (clamped, "sweep", _SWEEP, due)
    return best


def dispatch(
    now: float,
    units: Sequence[UnitView],
    allocation: Allocation,
    budget: Budget,
    config: PlanConfig,
) -> list[Decision]:
    """The polls and sweep pages to send within the lookahead, earliest deadline first."""
    if budget.paused_for > 0 or not units or budget.limit <= 0:
        return []
    available = budget.limit - budget.used - budget.inflight + budget.freeing
    horizon = now + config.lookahead
    pace = BUDGET_WINDOW / budget.limit
    due: list[tuple[float, float, float, int, UnitView, Mode, Reason]] = []
    rates = allocation.rates
    # No send is more than this before its deadline (_early): the filter below.
    earliest = max(config.early_paces * pace, config.early_max)
    for n, unit in enumerate(units):
        if unit.busy or unit.retry_at > now:
            continue
        r = rates.get((unit.org_id, unit.resource))
        last_poll, last_sweep = unit.last_poll_due, unit.last_sweep_due
        # Most units of a large fleet are far from their deadlines: rule them out
        # without a call, as a deadline is never before the last one plus 1/rate
        # and a send never more than _early before its deadline.
        if (
            r is not None
            and last_poll is not None
            and last_sweep is not None
            and unit.baselined
            and not (unit.urgent_sweep or unit.sweeping)
            and (r.poll <= 0 or unit.sweeps_only or last_poll + 1.0 / r.poll - earliest >= horizon)
            and (r.sweep <= 0 or last_sweep + 1.0 / r.sweep - earliest >= horizon)
        ):
            continue
        step = _next(unit, r, now, config)
        if step is None:
            continue
        early = _early(step[2], _gap(step[2], r, config), config, pace)
        if step[0] - early < horizon:
            due.append((step[3], step[0], early, n, unit, step[1], step[2]))
    due.sort(key=lambda item: (item[0], item[3]))
    # Sends stay a pace apart across ticks too: the last tick may have sent ahead.
    cursor = max(now, budget.next_send)
    orgs: set[str] = set()
    out: list[Decision] = []
    slots = math.inf if budget.slots is None else budget.slots
    for _order, deadline, early, _n, unit, mode, reason in due:
        if len(out) >= slots or cursor >= horizon:
            break  # the workers have as much waiting as they can start soon
        if unit.org_id in orgs:
            continue  # one poll per org at a time: the lease is the org's
        cost = 1.0 if mode == "sweep" else max(1.0, unit.poll_pages)
        if available < cost:
            break
        send_at = max(deadline - early, cursor)
        if send_at >= horizon:
            continue  # not yet: a later deadline may be sent earlier
        out.append(Decision(unit.org_id, unit.resource, mode, reason, deadline, send_at, early))
        orgs.add(unit.org_id)
        available -= cost
        cursor = send_at + pace * cost
    return out


def _gap(reason: Reason, rates: Rates | None, config: PlanConfig) -> float:
    """The interval a planned poll's or sweep's deadline comes from (0 for the others)."""
    if rates is None:
        return 0.0
    if reason is _POLL:
        return max(1.0 / rates.poll, config.poll_interval)
    if reason is _SWEEP:
        return 1.0 / rates.sweep
    return 0.0


def _early(reason: Reason, gap: float, config: PlanConfig, pace: float) -> float:
    """How long before its deadline a unit may be sent: zero but for planned polls and sweeps.

    Units polled at different intervals fall due within a pace of each other
    now and then; sent at their deadlines, one of each pair would be a pace
    late, and counting from its late send it would lose that slot for good.
    Sent a little early into a free slot, a poll keeps its grid (its next
    deadline counts from this one: Decision.anchor), so the allocation's rate
    stands. A planned poll is never sent closer than ETBRIDGE_POLL_INTERVAL to
    the one before it.
    """
    if gap <= 0:
        return 0.0
    early = max(config.early_paces * pace, min(config.early_share * gap, config.early_max))
    return min(early, gap - config.poll_interval) if reason is _POLL else early


def next_send(decisions: Sequence[Decision], units: Sequence[UnitView], limit: int) -> float:
    """The earliest send time these decisions leave free (the next tick's cursor starts there)."""
    if not decisions:
        return 0.0
    pages = {u.key: u.poll_pages for u in units}
    last = decisions[-1]
    cost = 1.0 if last.mode == "sweep" else max(1.0, pages.get((last.org_id, last.resource), 1.0))
    return last.send_at + BUDGET_WINDOW / max(1, limit) * cost


def started_rate(previous: float | None, started: int, seconds: float) -> float | None:
    """The workers' start rate after ``started`` more polls in ``seconds``.

    A rise counts at once (a worker added, a backlog found), a fall decays
    with STARTED_HALF_LIFE (one tick with little to do says little about
    what the workers can do).
    """
    if seconds <= 0 or started < 0:
        return previous
    now = started / seconds
    if previous is None or now >= previous:
        return now
    keep = math.pow(0.5, seconds / STARTED_HALF_LIFE)
    return previous * keep + now * (1.0 - keep)


def worker_slots(workers: Workers, config: PlanConfig) -> int:
    """Polls this tick may hand out: what the workers start within the lookahead and
    QUEUE_SECONDS more, less what already waits.

    Measured, not configured: while polls wait, the workers are busy and the
    start rate is what they can do; when they are idle, it is what they were
    given, and MIN_WAITING plus a rise counted at once let the rate grow
    severalfold a tick until the budget or the workers bind.
    """
    rate = workers.started or 0.0
    allowed = math.ceil(rate * (config.lookahead + QUEUE_SECONDS)) + MIN_WAITING
    return max(0, allowed - workers.waiting)
