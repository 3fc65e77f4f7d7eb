"""The retry schedule, pure: which delay follows a failed attempt."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Final

from etbridge.settings import Settings, SinkSpec

JITTER: Final = 0.1


def retry_schedule(spec: SinkSpec, settings: Settings) -> tuple[float, ...]:
    """The sink's retry schedule: ``?retry=0;5;300`` on its URL, else the setting."""
    return spec.retry or tuple(settings.retry_schedule)


def next_delay(
    schedule: Sequence[float],
    failed_attempt: int,
    retry_after: float | None = None,
    *,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the attempt after ``failed_attempt`` (1-based), or ``None``: dead-letter.

    Attempt *n+1* waits value *n+1* of the schedule, or ``retry_after`` when
    longer, plus up to 10 % jitter (never less: a ``Retry-After`` is honoured).

    >>> next_delay([0, 5, 300], 1, rand=lambda: 0.0)
    5.0
    >>> next_delay([0, 5, 300], 3) is None
    True
    """
    if failed_attempt >= len(schedule):
        return None
    base = float(schedule[failed_attempt])
    if retry_after is not None and retry_after > base:
        base = float(retry_after)
    return base + base * JITTER * rand()
