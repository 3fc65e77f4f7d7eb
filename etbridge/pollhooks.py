"""What a poll tells its caller as it goes: the Celery task feeds the planner and the relay."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Hooks:
    on_started: Callable[[], None] | None = None  # the lease is taken
    on_events: Callable[[str], None] | None = None  # events of this org were appended
    # A complete sweep is about to make this many confirmation GETs.
    on_confirming: Callable[[int], object] | None = None
