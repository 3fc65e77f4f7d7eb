"""Reloading ``ETBRIDGE_APPS_FILE`` without restarting workers and beat.

``etbridge apps reload`` (or SIGHUP to beat) reads and checks the file and,
when it is good, bumps a generation counter in Redis (``etb:apps:generation``);
a bad file is refused and the counter stays. Each process looks at the
counter at most every :data:`CHECK_EVERY` seconds (at its next task; beat in
a thread) and, when it moved, reads the file again (runtime.refresh): a file
that is bad by then is logged once and the last good applications stay.
Beat's ``sender.Senders`` start and stop the per-application sender threads.
"""

from __future__ import annotations

import redis

from etbridge import keys
from etbridge.apps import AppConfig, read_apps_file
from etbridge.settings import Settings, secret_setting

#: The fleet's apps-file generation (not an application's key: no ``app:<name>``).
GENERATION = f"{keys.ROOT}:apps:generation"
#: The most a process waits before it sees a new generation (seconds).
CHECK_EVERY = 1.0


def read(settings: Settings) -> tuple[AppConfig, ...]:
    """The applications of the file now; :class:`~etbridge.apps.AppsFileError` on a mistake."""
    return read_apps_file(settings.apps_file, secret_setting)


def generation(client: redis.Redis) -> int:
    raw = client.get(GENERATION)
    return int(raw) if raw else 0


def bump(client: redis.Redis) -> int:
    """Tell every process to read the file again; the new generation."""
    return int(client.incr(GENERATION))


def reload(settings: Settings, client: redis.Redis) -> tuple[AppConfig, ...]:
    """Check the file and, if it is good, bump the generation; raises ``AppsFileError``."""
    apps = read(settings)
    bump(client)
    return apps
