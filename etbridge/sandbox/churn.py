"""Steady background churn: ``rate`` mutations per second spread over orgs and resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from etbridge.sandbox.store import MutationError, Store

_log = logging.getLogger(__name__)

#: Longest pause between batches; short enough that low rates still look steady.
_MAX_TICK = 0.1


class Churn:
    """Runs the store's mutation engine from an asyncio task while ``rate`` > 0."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rate = 0.0
        self.resources: list[str] = ["bookings"]
        self._task: asyncio.Task[None] | None = None

    def set_rate(self, rate: float, resources: list[str] | None = None) -> None:
        """Change the rate (and which collections churn); 0 stops. Runs on the event loop."""
        self.rate = rate
        self.resources = resources or ["bookings"]
        if rate > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif rate <= 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        """Stop the task and wait for it (server shutdown)."""
        task, self._task = self._task, None
        self.rate = 0.0
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # Mutations accrue as fractional credit so that e.g. 0.5/s and 250/s are both exact
        # on average whatever the tick length the loop actually achieves.
        credit = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(_MAX_TICK, 1.0 / max(self.rate, 1e-3)))
            now = time.monotonic()
            # After a stall, catch up by at most one second's worth rather than a burst.
            credit = min(credit + self.rate * (now - last), max(1.0, self.rate))
            last = now
            due = int(credit)
            if due == 0:
                continue
            credit -= due
            try:
                self.store.mutate(due, resources=self.resources)
            except MutationError as exc:
                # No orgs left (all removed): nothing to churn until one is added.
                _log.debug("churn skipped: %s", exc)
