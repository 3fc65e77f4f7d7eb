"""Rolling upgrades across snapshot format 3: keep old workers from taking records for new.

Before format 3 a record's digest lived in the ``fp`` hash; a worker of that
version reads a record without an ``fp`` entry as never stored and would emit
``created`` for it. So while such workers may still run, every commit also
writes ``fp[id]`` = the new digest in hex: an old worker then never sees a
record as absent, and where it sees a mismatch it decodes the format-3 value,
fails ("unknown snapshot format") and retries, emitting nothing. The fleet is
in that mode when Redis holds orgs and ``etb:state:format`` is not "3"; a
fresh install sets "3" with its first org, an upgraded one with
``etbridge state finish-upgrade`` once every worker runs this version (which
also drops the ``fp`` hashes). See docs/page-commit.md, "Upgrading".
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence

import redis

from etbridge import keys

# Seconds a process keeps its reading: finish-upgrade takes effect within this.
TTL = 30.0
CURRENT = b"3"

# Per client, per keyspace: (when read, compat).
_seen: weakref.WeakKeyDictionary[redis.Redis, dict[keys.Keyspace, tuple[float, bool]]] = (
    weakref.WeakKeyDictionary()
)


def compat(client: redis.Redis, ks: keys.Keyspace) -> bool:
    """Whether commits must keep ``fp`` entries for workers from before format 3."""
    now = time.monotonic()
    readings = _seen.setdefault(client, {})
    hit = readings.get(ks)
    if hit is not None and now - hit[0] < TTL:
        return hit[1]
    pipe = client.pipeline(transaction=False)
    pipe.get(ks.state_format)
    pipe.exists(ks.orgs)
    fmt, orgs = pipe.execute()
    value = _as_bytes(fmt) != CURRENT and bool(orgs)
    readings[ks] = (now, value)
    return value


def forget() -> None:
    """Read the format again at the next commit (tests; finish_upgrade in this process)."""
    _seen.clear()


def mark_fresh(client: redis.Redis, ks: keys.Keyspace) -> None:
    """Before the first org of an empty keyspace is registered: no old worker has state here."""
    if not client.exists(ks.orgs):
        client.set(ks.state_format, CURRENT, nx=True)


def finish_upgrade(
    client: redis.Redis,
    ks: keys.Keyspace,
    org_ids: Sequence[str],
    resources: Sequence[str],
    settle: float = TTL + 1.0,
) -> int:
    """Every worker runs format 3: stop keeping ``fp`` and drop it; the keys removed.

    ``settle``: seconds to wait between the two, so that no process still in the
    old mode (it reads the format every TTL seconds) writes ``fp`` again after.
    """
    client.set(ks.state_format, CURRENT)
    forget()
    time.sleep(settle)
    removed = 0
    for org_id in org_ids:
        for resource in resources:
            removed += int(client.delete(ks.fingerprints(org_id, resource)))
    return removed


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
