"""Deadline dispatch: earliest deadline first, paced to the budget, one poll per org at a time."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from etbridge import scheduler
from etbridge.scheduler import Budget, PlanConfig, RateEstimate, Reason, UnitView

NOW = 1_000_000.0
CFG = PlanConfig(poll_interval=1.0, sweep_interval=3600.0, tick=1.0)


def unit(org: int, **kw: object) -> UnitView:
    values: dict[str, object] = {
        "baselined": True,
        "last_poll_due": NOW - 100,
        "last_sweep_due": NOW,
    }
    values.update(kw)
    return UnitView(str(org), "bookings", **values)  # type: ignore[arg-type]


def run(units: list[UnitView], budget: Budget, now: float = NOW) -> list[scheduler.Decision]:
    alloc = scheduler.plan_rates(units, budget.limit, CFG)
    return scheduler.dispatch(now, units, alloc, budget, CFG)


def test_nothing_while_paused_or_without_units() -> None:
    assert run([unit(1)], Budget(100, 0, paused_for=3)) == []
    assert run([], Budget(100, 0)) == []


def test_budget_left_bounds_the_dispatch() -> None:
    units = [unit(n) for n in range(10)]
    assert len(run(units, Budget(limit=100, used=99))) == 1
    assert run(units, Budget(limit=100, used=90, inflight=10)) == []


def test_send_times_are_paced_and_within_the_lookahead() -> None:
    units = [unit(n) for n in range(10)]
    decisions = run(units, Budget(limit=100, used=0))
    pace = scheduler.BUDGET_WINDOW / 100
    assert len(decisions) == 4  # 0.61 s apart: four fit in a 2 s lookahead
    assert decisions[1].send_at - decisions[0].send_at == pytest.approx(pace)
    assert all(NOW <= d.send_at < NOW + CFG.lookahead for d in decisions)
    assert all(d.send_at >= d.due for d in decisions)
    # The next tick starts where this one left off: no two sends closer than the pace.
    cursor = scheduler.next_send(decisions, units, 100)
    assert cursor == pytest.approx(decisions[-1].send_at + pace)
    later = [u for u in units if u.org_id not in {d.org_id for d in decisions}]
    alloc = scheduler.plan_rates(units, 100, CFG)
    more = scheduler.dispatch(NOW + 1, later, alloc, Budget(100, 4, next_send=cursor), CFG)
    assert more and more[0].send_at >= cursor


def test_earliest_deadline_first() -> None:
    units = [unit(1, last_poll_due=NOW - 5), unit(2, last_poll_due=NOW - 50)]
    alloc = scheduler.plan_rates(units, 100, CFG)
    gap = alloc.rates[("1", "bookings")].poll_every
    assert gap > 1.0
    units = [unit(1, last_poll_due=NOW - gap + 0.5), unit(2, last_poll_due=NOW - gap + 0.2)]
    decisions = scheduler.dispatch(NOW, units, alloc, Budget(100, 0), CFG)
    assert [d.org_id for d in decisions] == ["2", "1"]
    assert decisions[0].due == pytest.approx(NOW + 0.2)


def test_not_due_yet_waits() -> None:
    units = [unit(n, last_poll_due=NOW) for n in range(10)]
    # Each was just polled: the next poll is due one allocated interval later.
    assert [d for d in run(units, Budget(100, 0)) if d.mode == "incremental"] == []


def test_baseline_and_resync_come_as_sweeps_at_once() -> None:
    units = [unit(1, baselined=False), unit(2, urgent_sweep=True), unit(3, last_poll_due=NOW)]
    decisions = run(units, Budget(limit=1000, used=0))
    reasons = {d.org_id: (d.mode, d.reason) for d in decisions}
    assert reasons["1"] == ("sweep", Reason.BASELINE)
    assert reasons["2"] == ("sweep", Reason.RESYNC)


def test_one_poll_per_org_and_busy_orgs_skipped() -> None:
    units = [
        UnitView("1", "bookings", baselined=True),
        UnitView("1", "contacts", baselined=True),
        unit(2, busy=True),
        unit(3, retry_at=NOW + 10),
    ]
    decisions = run(units, Budget(limit=1000, used=0))
    assert [(d.org_id, d.resource) for d in decisions] == [("1", "bookings")]


def test_a_sweep_starts_each_cycle_and_its_pages_follow_each_other() -> None:
    u = unit(1, last_poll_due=NOW, sweep_pages=4.0)
    alloc = scheduler.plan_rates([u], 100, CFG)
    cycle = alloc.rates[u.key].sweep_every

    # Not due yet: the next is more than the early window (15 s at the most) away.
    def sweeps(**kw: object) -> list[scheduler.Decision]:
        units = [unit(1, last_poll_due=NOW + 100, sweep_pages=4.0, **kw)]
        return [d for d in run(units, Budget(100, 0)) if d.mode == "sweep"]

    assert sweeps(last_sweep_due=NOW - cycle + 20) == []
    (start,) = sweeps(last_sweep_due=NOW - cycle + 0.5)
    assert (start.mode, start.reason) == ("sweep", Reason.SWEEP)
    # Under way: the next page is due at once, whatever the cycle.
    (page,) = sweeps(sweeping=True)
    assert (page.mode, page.reason, page.due) == ("sweep", Reason.SWEEP_PAGE, NOW)


def test_sweeps_only_units_get_no_incremental_polls() -> None:
    u = unit(1, sweeps_only=True, last_sweep_due=None)
    decisions = run([u], Budget(limit=100, used=0))
    assert [d.mode for d in decisions] == ["sweep"]


def test_rate_estimate_decays_and_has_a_prior() -> None:
    est = RateEstimate().observe(0, NOW)
    assert est.rate(scheduler.CHANGE_PRIOR) == pytest.approx(0.5 / 300)
    est = est.observe(10, NOW + 10)
    assert est.rate((0.0, 1e-9)) == pytest.approx(1.0, rel=1e-6)
    later = est.observe(0, NOW + 10 + scheduler.HALF_LIFE)
    assert later.events == pytest.approx(5.0)


def test_a_first_observation_starts_the_clock_without_counting() -> None:
    # Two deletions found by a unit's first planned sweep, after a baseline the
    # planner did not see: over no measured time they are no rate at all.
    first = RateEstimate().observe(2, NOW)
    assert (first.events, first.seconds, first.at) == (0.0, 0.0, NOW)
    assert first.observe(1, NOW + 60).rate((0.0, 1e-9)) == pytest.approx(1 / 60, rel=1e-6)


def test_busy_org_gets_more_polls_than_quiet_ones() -> None:
    hot = unit(1, changes=RateEstimate(300.0, 600.0, NOW))
    quiet = [unit(n, changes=RateEstimate(3.0, 600.0, NOW)) for n in range(2, 12)]
    alloc = scheduler.plan_rates([hot, *quiet], 100, CFG)
    assert alloc.rates[hot.key].poll > 2 * alloc.rates[quiet[0].key].poll


def test_plan_config_from_settings_reads_the_intervals() -> None:
    class S:
        poll_interval = 7.0
        sweep_interval = 70.0

    config = PlanConfig.from_settings(S(), tick=1.0)  # type: ignore[arg-type]
    assert (config.poll_interval, config.sweep_interval, config.tick) == (7.0, 70.0, 1.0)


def test_uniform_noise_is_shrunk_to_the_mean_and_real_skew_is_kept() -> None:
    rng = random.Random(3)

    def poisson(lam: float) -> int:
        n, t = 0, rng.expovariate(1.0)
        while t < lam:
            n, t = n + 1, t + rng.expovariate(1.0)
        return n

    # Ten orgs with the same true rate, 300 s observed: raw counts differ by noise alone.
    uniform = [RateEstimate(float(poisson(15)), 300.0, NOW) for _ in range(10)]
    rates = scheduler.shrunk_rates(uniform, scheduler.CHANGE_PRIOR)
    raw = [e.events / e.seconds for e in uniform]
    assert max(rates) - min(rates) < 0.5 * (max(raw) - min(raw))
    # Two hot orgs with 16 x the rate: kept apart.
    skewed = [RateEstimate(float(poisson(160)), 300.0, NOW) for _ in range(2)]
    skewed += [RateEstimate(float(poisson(10)), 300.0, NOW) for _ in range(8)]
    rates = scheduler.shrunk_rates(skewed, scheduler.CHANGE_PRIOR)
    assert min(rates[:2]) > 8 * sum(rates[2:]) / 8, rates
    assert scheduler.shrunk_rates([], scheduler.CHANGE_PRIOR) == []


def test_a_new_unit_falls_due_within_one_interval_and_units_are_spread() -> None:
    units = [UnitView(str(n), "bookings", baselined=True, last_sweep_due=NOW) for n in range(10)]
    alloc = scheduler.plan_rates(units, 100, CFG)
    gap = alloc.rates[units[0].key].poll_every
    sent: dict[str, float] = {}
    now = NOW
    # Tick by tick, as the planner does, until every unit was dispatched once.
    while len(sent) < 10 and now < NOW + 2 * gap:
        pending = [u for u in units if u.org_id not in sent]
        for d in scheduler.dispatch(now, pending, alloc, Budget(100, 0), CFG):
            if d.mode == "incremental":
                sent[d.org_id] = d.send_at
        now += CFG.tick
    assert len(sent) == 10, sent
    assert max(sent.values()) - NOW <= gap + CFG.tick
    assert len({round(t, 1) for t in sent.values()}) >= 8  # not all at once


def test_dispatch_hands_out_no_more_polls_than_the_workers_have_slots_for() -> None:
    units = [unit(n) for n in range(50)]
    big = Budget(limit=30_000, used=0)
    assert len(run(units, big)) == 50
    capped = run(units, Budget(limit=30_000, used=0, slots=7))
    # The slots go to the earliest deadlines, as the uncapped dispatch would order them.
    assert [d.org_id for d in capped] == [d.org_id for d in run(units, big)][:7]
    assert run(units, Budget(limit=30_000, used=0, slots=0)) == []


def test_worker_slots_follow_the_measured_start_rate_less_what_waits() -> None:
    slots = scheduler.worker_slots
    span = CFG.lookahead + scheduler.QUEUE_SECONDS
    # Unmeasured (a fleet's first tick): a few polls, so the rate can be measured.
    assert slots(scheduler.Workers(None, 0), CFG) == scheduler.MIN_WAITING
    # Workers that start 100 polls a second get that many seconds' worth, less what waits.
    full = round(100 * span) + scheduler.MIN_WAITING
    assert slots(scheduler.Workers(100.0, 0), CFG) == full
    assert slots(scheduler.Workers(100.0, 60), CFG) == full - 60
    # A backlog beyond that gets nothing more until the workers catch up.
    assert slots(scheduler.Workers(100.0, 10 * full), CFG) == 0


def test_started_rate_rises_at_once_and_falls_gradually() -> None:
    rate = scheduler.started_rate
    assert rate(None, 50, 1.0) == 50.0
    assert rate(10.0, 80, 1.0) == 80.0  # a worker added: counted at once
    half = scheduler.STARTED_HALF_LIFE
    assert rate(100.0, 0, half) == pytest.approx(50.0)  # one quiet tick halves it, no more
    assert rate(100.0, 10, 0.0) == 100.0  # no time passed: nothing learnt
    # Fed what they can do, the slots grow severalfold a tick until the workers bind.
    workers: float | None = None
    handed = []
    for _ in range(6):
        given = scheduler.worker_slots(scheduler.Workers(workers, 0), CFG)
        handed.append(given)
        workers = rate(workers, min(given, 400), 1.0)  # the workers start up to 400 a second
    assert handed[:4] == sorted(handed[:4]) and handed[3] > 20 * handed[0]
    assert workers == 400.0


def test_when_slots_bind_the_units_that_waited_longest_go_first() -> None:
    # All three are more than an interval late, so all are due at now - interval;
    # the order is how late they are, not where they stand in the list.
    units = [unit(1, last_poll_due=NOW - 3), unit(2, last_poll_due=NOW - 50), unit(3)]
    picked = [d.org_id for d in run(units, Budget(limit=30_000, used=0, slots=2))]
    assert picked == ["3", "2"]
    assert all(d.due == NOW - 1.0 for d in run(units, Budget(limit=30_000, used=0)))


def test_a_unit_not_polled_by_the_planner_yet_is_ordered_by_its_last_listing() -> None:
    # Due on its grid (within the last interval), but listed long ago: with one
    # slot it goes before a unit that is only a few seconds late.
    fresh = unit(1, last_poll_due=None, last_listed=NOW - 60)
    late = unit(2, last_poll_due=NOW - 5)
    (first,) = run([late, fresh], Budget(limit=30_000, used=0, slots=1))
    assert first.org_id == "1"
    assert NOW - 1.0 <= first.due <= NOW  # its deadline is still its grid point


def test_deletion_confirmations_are_kept_back_from_the_allocation() -> None:
    # The deletion case: 30/min, 6 orgs of 2 pages, a deletion every 10 s
    # fleet-wide. Each deletion costs a confirmation GET besides the sweeps.
    config = PlanConfig(poll_interval=1.0, sweep_interval=10.0)
    deleting = [
        unit(
            n,
            sweep_pages=2.0,
            changes=RateEstimate(30.0, 600.0, NOW),
            deletions=RateEstimate(10.0, 600.0, NOW),
        )
        for n in range(6)
    ]
    budget = 30 / scheduler.BUDGET_WINDOW * (1 - config.reserve)
    confirmations = 0.1  # 6 units x 1/60 s, nearly exactly (the prior is small)
    alloc = scheduler.plan_rates(deleting, 30, config)
    assert scheduler.limits(deleting, 30, config).rate == pytest.approx(
        budget - confirmations, rel=0.02
    )
    # The budget binds (sweeps every 10 s do not fit): polls, sweeps and the
    # confirmations spend it together, not more.
    assert alloc.cost + confirmations == pytest.approx(budget, rel=0.02)
    assert not alloc.sweep_floor_met
    # Deletions far beyond the budget keep at most half of it for confirmations.
    flood = [replace(u, deletions=RateEstimate(600.0, 600.0, NOW)) for u in deleting]
    assert scheduler.limits(flood, 30, config).rate == pytest.approx(budget / 2)
    # Without deletions nothing is kept back but the reserve.
    quiet = [unit(n, deletions=RateEstimate(0.0, 1e9, NOW)) for n in range(6)]
    assert scheduler.limits(quiet, 30, config).rate == pytest.approx(budget, rel=1e-6)


def test_a_sweep_under_way_goes_on_before_polls_that_are_due() -> None:
    # Unit 1's sweep began 30 s ago; its own poll is overdue for longer, unit 2's
    # fell due since. The sweep's next page goes first (a deletion is seen only
    # when the sweep ends), ordered among the units by when the sweep was due.
    sweeping = unit(1, sweeping=True, last_sweep_due=NOW - 30, last_poll_due=NOW - 200)
    waiting = unit(2, last_poll_due=NOW - 21)
    (first,) = run([waiting, sweeping], Budget(limit=100, used=99))
    assert (first.org_id, first.reason) == ("1", Reason.SWEEP_PAGE)
    both = run([waiting, sweeping], Budget(limit=100, used=0))
    assert [(d.org_id, d.reason) for d in both] == [("1", Reason.SWEEP_PAGE), ("2", Reason.POLL)]
    # A poll that waited longer than the sweep goes before it: the longest wait first.
    late = unit(2, last_poll_due=NOW - 100)
    assert [d.org_id for d in run([sweeping, late], Budget(limit=100, used=0))] == ["2", "1"]


def test_a_baseline_waits_by_how_long_it_was_seen_when_the_workers_bind() -> None:
    # One slot: the workers, not the budget, bind. A poll overdue for 20 s goes
    # before an org seen just now, but not before one waiting for 60 s.
    late = unit(1, last_poll_due=NOW - 21)
    new = UnitView("2", "bookings", baselined=False, first_seen=NOW)
    waiting = UnitView("2", "bookings", baselined=False, first_seen=NOW - 60)
    (first,) = run([late, new], Budget(limit=100, used=0, slots=1))
    assert (first.org_id, first.reason) == ("1", Reason.POLL)
    (first,) = run([late, waiting], Budget(limit=100, used=0, slots=1))
    assert (first.org_id, first.reason) == ("2", Reason.BASELINE)


def _gap(units: list[UnitView], org: int = 1) -> float:
    return scheduler.plan_rates(units, 100, CFG).rates[(str(org), "bookings")].poll_every


def test_polls_that_fall_due_together_go_early_into_free_slots_and_keep_their_grid() -> None:
    # Three units due at the same instant, 1.5 s ahead. Sent at their deadlines,
    # the second and third would be one and two paces late; sent early into the
    # free slots before them, none is late.
    gap = _gap([unit(n) for n in range(10)])
    assert gap > 5.0
    units = [unit(n, last_poll_due=NOW + 1.5 - gap if n < 3 else NOW) for n in range(10)]
    decisions = run(units, Budget(limit=100, used=0))
    pace = scheduler.BUDGET_WINDOW / 100
    assert len(decisions) == 3
    assert all(d.due == pytest.approx(NOW + 1.5) for d in decisions)
    assert all(d.send_at <= d.due for d in decisions)
    assert all(b.send_at - a.send_at >= pace - 1e-9 for a, b in itertools.pairwise(decisions))
    # Sent early, each counts its next deadline from its deadline: the
    # allocation's rate stands.
    assert [d.anchor for d in decisions] == [d.due for d in decisions]
    # Never earlier than the configured window.
    assert all(d.due - d.send_at <= d.early + 1e-9 for d in decisions)
    assert all(
        d.early <= max(2 * pace, min(CFG.early_share * gap, CFG.early_max)) + 1e-9
        for d in decisions
    )


def test_a_poll_sent_late_counts_its_next_deadline_from_its_send() -> None:
    # The budget's cursor is 3 s out (a burst of earlier sends): the unit is late.
    u = unit(1)
    gap = _gap([u])
    u = unit(1, last_poll_due=NOW - gap)
    (d,) = scheduler.dispatch(
        NOW, [u], scheduler.plan_rates([u], 100, CFG), Budget(100, 0, next_send=NOW + 1.5), CFG
    )
    assert d.send_at == pytest.approx(NOW + 1.5) and d.due == pytest.approx(NOW)
    assert d.anchor == d.send_at


def test_a_poll_at_its_shortest_interval_is_never_sent_early() -> None:
    # ETBRIDGE_POLL_INTERVAL is the shortest gap between two planned polls of an org:
    # a unit polled at that ceiling has no room to go early.
    cfg = PlanConfig(poll_interval=5.0, sweep_interval=3600.0, tick=1.0)
    u = unit(1)
    alloc = scheduler.plan_rates([u], 100, cfg)
    assert alloc.rates[u.key].poll_every == pytest.approx(5.0)
    u = unit(1, last_poll_due=NOW - 5.0 + 1.0)
    (d,) = scheduler.dispatch(NOW, [u], alloc, Budget(100, 0), cfg)
    assert d.early == 0.0
    assert d.send_at == pytest.approx(d.due) == pytest.approx(NOW + 1.0)


def test_a_deadline_further_out_than_the_early_window_waits() -> None:
    u = unit(1)
    gap = _gap([u])
    early = scheduler._early(Reason.POLL, gap, CFG, scheduler.BUDGET_WINDOW / 100)
    # Due just beyond the lookahead plus the early window: not sent this tick.
    u = unit(1, last_poll_due=NOW + CFG.lookahead + early + 0.1 - gap)
    assert [d for d in run([u], Budget(100, 0)) if d.mode == "incremental"] == []
