"""Bounded shutdown: a SIGTERMed worker ends its polls at the next page and exits in time.

:func:`requested` is the flag a poll checks between two pages (every page
commit is atomic, so stopping there loses nothing; the lease is released and
the org planned again at once on another worker). How the flag gets set, and
how ``ETBRIDGE_SHUTDOWN_GRACE`` is kept: docs/shutdown.md.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

log = logging.getLogger("etbridge.shutdown")

# The main process tells its pool children with this signal (SIGTERM goes to PID 1
# only under Kubernetes and Docker; a child's SIGTERM handler sets the flag too).
CHILD_SIGNAL = signal.SIGUSR2
# Seconds before the grace ends at which a warm shutdown turns cold (running tasks
# cancelled and given back to the broker), and then forced.
COLD_MARGIN = 5.0
FORCE_MARGIN = 1.0

_requested = threading.Event()


def requested() -> bool:
    """Whether this process was asked to stop (check it between two pages)."""
    return _requested.is_set()


def request() -> None:
    """Ask this process to stop at its next page boundary."""
    _requested.set()


def reset() -> None:
    """Forget a request (tests)."""
    _requested.clear()


def _on_child_signal(signum: int, _frame: Any) -> None:
    if signum == signal.SIGTERM and requested():
        # A SIGTERM after the first signal is fatal, so that the pool can still
        # terminate the child (a cold shutdown, a hard time limit) after its poll
        # ended. The default action is restored only here, right before the
        # signal is raised again: restored when the first signal came (as it
        # was), a SIGTERM already caught but not yet handled found no handler
        # and Python logged "Signal 15 ignored due to race condition".
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    request()


def install_child_handlers() -> None:
    """In a pool child: SIGTERM and :data:`CHILD_SIGNAL` set the flag instead of killing."""
    signal.signal(CHILD_SIGNAL, _on_child_signal)
    signal.signal(signal.SIGTERM, _on_child_signal)


def deadlines(grace: float) -> tuple[float, float]:
    """Seconds after the SIGTERM at which to go cold, and to force the exit (pure)."""
    cold = max(0.5, grace - COLD_MARGIN)
    force = max(cold + 0.5, grace - FORCE_MARGIN)
    return cold, force


def _escalate(grace: float, how: str, told: int) -> None:
    """In the main process: keep the grace, whatever the running tasks do."""
    log.info(
        "shutdown requested how=%s children=%d grace=%.0fs: polls stop at the next page",
        how,
        told,
        grace,
    )
    cold, force = deadlines(grace)
    started = time.monotonic()
    time.sleep(cold)
    log.warning("shutdown: tasks still running after %.0fs; cancelling them (cold)", cold)
    os.kill(os.getpid(), signal.SIGQUIT)
    time.sleep(max(0.0, force - (time.monotonic() - started)))
    log.warning("shutdown: still running after %.0fs; forcing the exit", force)
    os.kill(os.getpid(), signal.SIGQUIT)


def _tell_children() -> int:
    from billiard.process import active_children  # type: ignore[import-untyped]

    told = 0
    for child in active_children():
        if child.pid:
            try:
                os.kill(child.pid, CHILD_SIGNAL)
                told += 1
            except ProcessLookupError:
                pass
    return told


class _Armed:
    done = False


_armed = _Armed()


def connect_signals(grace: float) -> None:
    """Wire the flag into ``celery worker`` (call from ``etbridge.worker``)."""
    from celery import signals

    def on_process_init(**_: Any) -> None:
        install_child_handlers()

    def on_shutting_down(how: str = "", **_: Any) -> None:
        request()
        if _armed.done:
            return  # a second signal (a cold shutdown we sent ourselves)
        _armed.done = True
        told = _tell_children()
        # Called inside a signal handler: log from the thread, never from here.
        threading.Thread(
            target=_escalate, args=(grace, how, told), name="etbridge-shutdown", daemon=True
        ).start()

    signals.worker_process_init.connect(
        on_process_init, weak=False, dispatch_uid="etbridge.shutdown.child"
    )
    signals.worker_shutting_down.connect(
        on_shutting_down, weak=False, dispatch_uid="etbridge.shutdown.main"
    )
