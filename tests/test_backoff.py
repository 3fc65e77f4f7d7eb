"""The one backoff formula and its jitters."""

from __future__ import annotations

from etbridge import backoff


def test_exponential_doubles_up_to_the_cap() -> None:
    assert [backoff.exponential(n, 0.5, 15) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 15, 15]
    # Attempt numbers below 1 count as the first; huge ones do not overflow.
    assert backoff.exponential(0, 2, 60) == 2
    assert backoff.exponential(10**9, 2, 60) == 60


def test_full_jitter_stays_within_the_exponential() -> None:
    draws = [backoff.full_jitter(4, 0.5, 15) for _ in range(500)]
    assert all(0 <= d <= 4 for d in draws)
    assert max(draws) - min(draws) > 1  # actually spread, not a constant


def test_jitter_scales_within_its_bounds() -> None:
    draws = [backoff.jitter(10, 0.8, 1.2) for _ in range(500)]
    assert all(8 <= d <= 12 for d in draws)


def test_max_attempts_in_counts_the_first_attempt() -> None:
    # Attempts at 0, 1, 3, 7 s (delays 1, 2, 4): four fit in 8 s.
    assert backoff.max_attempts_in(8, 1, 900) == 4
    assert backoff.max_attempts_in(0.5, 1, 900) == 1


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff.exponential(n, 30, 900) for n in range(1, 8)] == [
        30,
        60,
        120,
        240,
        480,
        900,
        900,
    ]
    assert backoff.exponential(10_000, 30, 900) == 900
    # Requests at 0, 1, 3, 7 s fit in 8 s; the next one is due at 15 s.
    assert backoff.max_attempts_in(8, 1, 900) == 4
    assert backoff.max_attempts_in(0.5, 1, 900) == 1
