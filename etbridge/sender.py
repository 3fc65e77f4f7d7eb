"""Timed sends: the planner's polls published at their send times, not at the tick.

The planner (planner.py) decides every tick which polls to start within the
next two seconds, each with its send time. Celery's own ``countdown`` (ETA)
would hold those messages unacknowledged in the workers, and kombu's Redis
transport crashes the worker when it must give such messages back on a lost
broker connection; so the sends wait in a Redis sorted set instead, scored by
send time, and a thread in each beat process publishes each one when it is
due (an atomic pop: two beats never publish one send twice). A send whose
beat was gone for longer than ``STALE`` is dropped: its unit is planned
again by then. With the apps file, :class:`Senders` runs one sender per
application and follows ``etbridge apps reload`` and SIGHUP (appsreload.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from etbridge import appsreload, keys, runtime
from etbridge.apps import AppsFileError
from etbridge.settings import Settings

log = logging.getLogger("etbridge.sender")
reload_log = logging.getLogger("etbridge.apps")

# The most a sender sleeps between two looks at the set (seconds).
IDLE = 0.1
# A send older than this when popped is dropped (its unit's queued mark has expired).
STALE = 10.0
BATCH = 100

# KEYS[1] the sends (sorted set, score = send time); ARGV[1] now; ARGV[2] batch size.
# Pops the due members, oldest first; returns them with their scores.
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
end
return due
"""

Publish = Callable[[dict[str, Any]], None]


def schedule(
    client: redis.Redis, ks: keys.Keyspace, sends: Sequence[tuple[float, dict[str, Any]]]
) -> None:
    """Add timed sends (``(send_at, payload)``) for beat's sender to publish."""
    if sends:
        client.zadd(ks.plan_sends, {json.dumps(p, sort_keys=True): at for at, p in sends})


def pop_due(
    client: redis.Redis, ks: keys.Keyspace, now: float, batch: int = BATCH
) -> list[tuple[float, dict[str, Any]]]:
    """The sends due at ``now``, removed from the set (one caller gets each)."""
    raw = client.eval(_POP_DUE, 1, ks.plan_sends, repr(now), batch)
    out = []
    for member, score in zip(raw[::2], raw[1::2], strict=True):
        out.append((float(score), json.loads(member)))
    return out


def next_due(client: redis.Redis, ks: keys.Keyspace) -> float | None:
    """The earliest send time waiting, if any."""
    first = client.zrange(ks.plan_sends, 0, 0, withscores=True)
    return float(first[0][1]) if first else None


class Sender(threading.Thread):
    """Publishes the timed sends as they fall due (one per beat process)."""

    def __init__(self, client: redis.Redis, ks: keys.Keyspace, publish: Publish) -> None:
        super().__init__(name="etbridge-sender", daemon=True)
        self.redis = client
        self.ks = ks
        self.publish = publish
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                wait = self.step(time.time())
            except redis.exceptions.RedisError as exc:
                log.warning("sender: Redis unavailable: %s", exc)
                wait = 1.0
            self.stopped.wait(wait)

    def step(self, now: float) -> float:
        """Publish what is due; return how long to sleep before the next look."""
        for at, payload in pop_due(self.redis, self.ks, now):
            if now - at > STALE:
                continue
            try:
                self.publish(payload)
            except Exception as exc:  # the broker is away: the unit is planned again
                log.warning("sender: could not publish a poll: %s", exc)
        upcoming = next_due(self.redis, self.ks)
        if upcoming is None:
            return IDLE
        return min(IDLE, max(0.0, upcoming - time.time()))

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


class Senders:
    """Beat's sender threads, one per application served; follows reloads and SIGHUP."""

    def __init__(self, settings: Settings, publish: Publish) -> None:
        self.settings = settings
        self.publish = publish
        self.threads: dict[str | None, Sender] = {}
        self.hangup = threading.Event()
        self.stopped = threading.Event()

    def sync(self) -> None:
        """Start the senders of new applications, stop those of removed ones."""
        served = runtime.served(self.settings)
        for name in [n for n in self.threads if n not in served]:
            self.threads.pop(name).stop()
            reload_log.info("sender stopped: application %s was removed", name)
        for name in served:
            if name not in self.threads:
                rt = runtime.get(self.settings, name)
                self.threads[name] = Sender(rt.redis, rt.keyspace, self.publish)
                self.threads[name].start()

    def step(self) -> None:
        if self.hangup.is_set():
            self.hangup.clear()
            try:
                apps = appsreload.reload(self.settings, runtime.shared_redis(self.settings))
                reload_log.info("SIGHUP: ETBRIDGE_APPS_FILE checked, %d application(s)", len(apps))
            except AppsFileError as exc:
                reload_log.error("SIGHUP: ETBRIDGE_APPS_FILE refused, nothing changed: %s", exc)
        runtime.refresh(self.settings, force=True)
        self.sync()

    def watch(self) -> None:
        """Beat's thread: look at the generation every CHECK_EVERY seconds (or at SIGHUP)."""
        self.sync()
        if not self.settings.apps_file:
            return  # the single application: nothing to reload
        while not self.stopped.is_set():
            self.hangup.wait(appsreload.CHECK_EVERY)
            try:
                self.step()
            except redis.exceptions.RedisError as exc:
                reload_log.warning("apps reload: Redis unavailable: %s", exc)
            except Exception:
                reload_log.exception("apps reload failed")
