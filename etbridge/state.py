"""What etbridge remembers of each org, in Redis, and the atomic page commit.

Per org and resource, under the hash tag ``{org:ID}`` (keys.py): ``snap`` (id ->
format byte, the record's 16-byte digest, then its canonical JSON deflated with
the org's preset dictionary ``zdict``), ``meta`` (watermark, marks, errors),
``seen`` (the sweep's ids), the poll ``lease`` with its ``fence`` counter, and
the ``outbox`` stream. ``fp`` (id -> hex digest) is the layout before format 3:
read never, emptied as its records are rewritten. :meth:`OrgState.commit` is the
one atomic step of DESIGN.md: one Lua script checks the lease and the stored
values the diff read, then writes snapshots, outbox events and progress marks,
all or nothing. Protocol, formats and failure cases: docs/page-commit.md.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from etbridge import keys, stateformat
from etbridge.digest import DIGEST_SIZE
from etbridge.errors import LeaseLost, RetriableError

# Importable from here for the callers that predate replies.py (planstore.py).
from etbridge.replies import text as text  # noqa: PLC0414  (explicit re-export, mypy strict)
from etbridge.replies import text_hash as text_hash  # noqa: PLC0414  (explicit re-export)

# A preset dictionary: the words every stored record repeats. zlib looks back
# into it, so even the first occurrence of a key costs a few bits. Changing it
# requires a new FORMAT byte (old blobs keep decoding with the old dictionary).
_ZDICT = (
    b'"lead""tentative""definite""lost""EUR""USD""GBP"'
    b'{"type":"accounts","id":""}{"type":"contacts","id":""}{"type":"users","id":""}'
    b'"relationships":{"account":{"data":'
    b'"contact":{"data":null}"owner":{"data":'
    b'"referral_source_id":"stage_id":"start_time":"end_time":"total_amount":'
    b'"guest_count":"notes":"name":"currency":"start_date":"2026-'
    b'"end_date":"2026-'
    b'"status":"created_at":"2026-11-27T'
    b'"updated_at":"2026-11-27T'
    b'{"attributes":{"created_at":"2026-'
    b'"id":"bookings","type":"bookings"}'
)
# Formats 1 and 2 are read only (state written before format 3, digest in `fp`).
_FORMAT_ZLIB_V1 = b"\x01"  # preset dictionary: _ZDICT
_FORMAT_ORG_DICT = b"\x02"  # preset dictionary: the org's own (Keyspace.snapshot_dict)
# Format 3: the record's digest (digest.record_digest), then the org's dictionary.
_FORMAT_DIGEST = b"\x03"
# What a commit checks of a format-3 value: its format byte and digest.
HEAD_SIZE = 1 + DIGEST_SIZE
# An org's dictionary: etbridge's vocabulary, then sample records of the org.
ORG_DICT_SIZE = 8192


def _json_bytes(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def build_dictionary(records: Sequence[Mapping[str, Any]]) -> bytes:
    """A preset dictionary for one org's snapshots, from a sample of its records.

    Records of one org repeat each other's keys, enumerations, dates and
    related ids; a dictionary made of a few of them lets zlib encode a new
    record as references into it (about 0.3 of the raw JSON instead of 0.7
    with the generic vocabulary alone). zlib reaches the dictionary's end most
    cheaply, so the samples come after the generic vocabulary.
    """
    sample = b"".join(_json_bytes(r) for r in records[:32])
    return (_ZDICT + sample)[-ORG_DICT_SIZE:]


def pack_record(record: Mapping[str, Any], digest: bytes, zdict: bytes) -> bytes:
    """A stored value (format 3): format byte, ``digest``, the deflated canonical JSON."""
    if len(digest) != DIGEST_SIZE or not zdict:
        raise ValueError("a snapshot needs a record digest and the org's dictionary")
    comp = zlib.compressobj(level=9, wbits=-15, zdict=zdict)
    return _FORMAT_DIGEST + digest + comp.compress(_json_bytes(record)) + comp.flush()


def stored_digest(blob: bytes) -> bytes | None:
    """The digest a stored value carries; ``None`` for formats 1 and 2 (and b"": absent)."""
    return blob[1:HEAD_SIZE] if blob[:1] == _FORMAT_DIGEST else None


def check_value(blob: bytes) -> bytes:
    """What a commit compares to make sure a stored value did not move since it was read.

    The head (format byte + digest) of a format-3 value, the whole value of an
    older one (its digest lives in ``fp``, which the script does not read), b"" for absent.
    """
    return blob[:HEAD_SIZE] if blob[:1] == _FORMAT_DIGEST else blob


def unpack_record(blob: bytes | str, zdict: bytes | None = None) -> dict[str, Any]:
    """The canonical record of a stored value of any format (1 and 2: written before 3)."""
    if isinstance(blob, str):
        raise ValueError("snapshot read from a decoding Redis client")
    fmt, start = blob[:1], 1
    if fmt == _FORMAT_ZLIB_V1:
        decomp = zlib.decompressobj(wbits=-15, zdict=_ZDICT)
    elif fmt in (_FORMAT_ORG_DICT, _FORMAT_DIGEST):
        if not zdict:
            raise ValueError("snapshot needs the org's dictionary, which is missing")
        decomp = zlib.decompressobj(wbits=-15, zdict=zdict)
        start = HEAD_SIZE if fmt == _FORMAT_DIGEST else 1
    else:
        raise ValueError("unknown snapshot format")
    raw = decomp.decompress(blob[start:]) + decomp.flush()
    value = json.loads(raw.decode("utf-8", "surrogatepass"))
    if not isinstance(value, dict):
        raise ValueError("snapshot is not an object")
    return value


# KEYS[1] lease  KEYS[2] fp (format 1-2 digests)  KEYS[3] snap  KEYS[4] meta  KEYS[5] seen
# KEYS[6] outbox
# ARGV[1] lease token   ARGV[2] lease ttl ms ("0": release the lease with this commit)
# ARGV[3] "1": keep fp[id] = hex digest of each write, for workers before format 3
#         (stateformat.py); "0": drop fp entries as their records are rewritten
# ARGV[4] n checks, then n pairs (id, check_value() as read: "" for absent)
# then    n writes, then n pairs (id, stored value, format 3)
# then    n deletes, then n ids
# then    n events, then n envelope JSON strings (appended to the outbox in order)
# then    n seen ids, then n ids (added to the sweep's seen set)
# then    n meta fields, then n pairs (field, value); value "" deletes the field
# Returns {1, n_events} on success, {0, reason, detail} when a check failed.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, 'lease', ''}
end
local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
local compat = ARGV[3] == '1'
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local current = redis.call('HGET', KEYS[3], ARGV[i])
  if not current then current = '' end
  local expected = ARGV[i + 1]
  if string.byte(expected, 1) == 3 then
    current = string.sub(current, 1, 17)  -- format 3: format byte and digest
  end
  if current ~= expected then
    return {0, 'moved', ARGV[i]}
  end
  i = i + 2
end
-- State from before format 3 keeps digests in fp: while old workers may run, each
-- write keeps an entry there (never "absent" to them); after, it is dropped.
local legacy = compat or redis.call('EXISTS', KEYS[2]) == 1
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  if compat then
    redis.call('HSET', KEYS[2], ARGV[i], hex(string.sub(ARGV[i + 1], 2, 17)))
  elseif legacy then
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', KEYS[3], ARGV[i])
  if legacy then redis.call('HDEL', KEYS[2], ARGV[i]) end
  i = i + 1
end
local events = tonumber(ARGV[i]); i = i + 1
for _ = 1, events do
  redis.call('XADD', KEYS[6], '*', 'event', ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('SADD', KEYS[5], ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[4], ARGV[i])
  else
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])  -- the poll's last commit releases its lease
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, events}
"""

# KEYS[1] lease  KEYS[2] fence  (KEYS[3] meta: also read it, for the poll's first step)
# ARGV[1] ttl ms
# Returns the new fencing token (with KEYS[3]: {token, HGETALL meta}), or false when
# another poll holds the lease.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
if #KEYS == 3 then
  return {token, redis.call('HGETALL', KEYS[3])}
end
return token
"""

# KEYS[1] lease   ARGV[1] token   ARGV[2] ttl ms   (ttl 0 = release)
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(frozen=True)
class Lease:
    """The right to poll one org, fenced: a write with a stale token is refused."""

    org_id: str
    token: str
    ttl_ms: int


@dataclass
class CommitPlan:
    """Everything one page commit writes; built by the poller from a diff."""

    checks: dict[str, bytes] = field(default_factory=dict)  # id -> check_value() as read
    writes: dict[str, tuple[bytes, dict[str, Any]]] = field(
        default_factory=dict
    )  # id -> (record_digest, record)
    deletes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # envelope JSON, in commit order
    seen: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    # The poll's last commit: release the lease in the same step (one round trip less).
    release: bool = False


class CommitConflict(Exception):
    """A stored value the diff read has moved since: re-read and re-diff the page."""


class CommitNotReplicated(RetriableError):
    """Fewer replicas than ETBRIDGE_REDIS_WAIT_REPLICAS acknowledged a commit in time:
    a failover now could lose it, so the poll is retried (re-committing is a no-op)."""


class OrgState:
    """Redis access for one org's state. Thin: decisions live in the poller and changes.py.

    ``wait`` = (replicas, timeout ms): a commit is followed by ``WAIT`` on its connection.
    """

    def __init__(
        self,
        client: redis.Redis,
        ks: keys.Keyspace,
        org_id: str,
        resource: str,
        *,
        wait: tuple[int, int] = (0, 0),
    ) -> None:
        self.redis = client
        self.ks = ks
        self.wait = wait
        self.org_id = org_id
        self.resource = resource
        self.k_fp = ks.fingerprints(org_id, resource)
        self.k_snap = ks.snapshots(org_id, resource)
        self.k_meta = ks.org_meta(org_id, resource)
        self.k_seen = ks.sweep_seen(org_id, resource)
        self.k_lease = ks.lease(org_id)
        self.k_fence = ks.fence(org_id)
        self.k_outbox = ks.outbox(org_id)
        self.k_zdict = ks.snapshot_dict(org_id, resource)
        # The org's snapshot dictionary: None until read, b"" when there is none yet.
        self._zdict: bytes | None = None
        self._commit = client.register_script(_COMMIT)
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND)

    # --- lease -----------------------------------------------------------------

    def acquire_lease(self, ttl: float) -> Lease | None:
        ttl_ms = max(1, int(ttl * 1000))
        token = self._acquire(keys=[self.k_lease, self.k_fence], args=[ttl_ms])
        if token is None:
            return None
        return Lease(self.org_id, str(int(token)), ttl_ms)

    def acquire_lease_with_meta(self, ttl: float) -> tuple[Lease, dict[str, str]] | None:
        """:meth:`acquire_lease`, and :meth:`meta` as it is once the lease is held, in one
        round trip (a poll's first two steps); ``None`` when another poll holds the lease."""
        ttl_ms = max(1, int(ttl * 1000))
        reply = self._acquire(keys=[self.k_lease, self.k_fence, self.k_meta], args=[ttl_ms])
        if reply is None:
            return None
        token, flat = reply
        meta = {text(flat[n]): text(flat[n + 1]) for n in range(0, len(flat), 2)}
        return Lease(self.org_id, str(int(token)), ttl_ms), meta

    def extend_lease(self, lease: Lease) -> None:
        if not self._extend(keys=[self.k_lease], args=[lease.token, lease.ttl_ms]):
            raise LeaseLost(f"org {self.org_id}: lease lost (another poll took over)")

    def release_lease(self, lease: Lease) -> None:
        self._extend(keys=[self.k_lease], args=[lease.token, 0])

    # --- reads -----------------------------------------------------------------

    def read(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Stored values of these ids (b"" for records never stored), one ``HMGET``.

        For :func:`stored_digest` (the fast path), :func:`check_value` (the
        commit's checks) and :meth:`decode`.
        """
        if not ids:
            return {}
        values: list[Any] = self.redis.hmget(self.k_snap, list(ids))
        # (A decoding client's str is passed on as it is: unpack_record names the mistake.)
        return {i: v or b"" for i, v in zip(ids, values, strict=True)}

    def decode(self, blobs: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
        """The canonical records of stored values (absent ones are left out)."""
        present = {i: b for i, b in blobs.items() if b}
        if present and self._zdict is None:
            self._zdict = _as_bytes(self.redis.get(self.k_zdict))
        return {i: unpack_record(b, self._zdict) for i, b in present.items()}

    def records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored canonical records of these ids (absent ids are left out)."""
        return self.decode(self.read(ids))

    def dictionary(self, sample: Sequence[Mapping[str, Any]]) -> bytes:
        """The org's snapshot dictionary, made from ``sample`` the first time (written once:
        every stored blob refers to it)."""
        if self._zdict is None:
            self._zdict = _as_bytes(self.redis.get(self.k_zdict))
        if not self._zdict and sample:
            self.redis.set(self.k_zdict, build_dictionary(sample), nx=True)
            self._zdict = _as_bytes(self.redis.get(self.k_zdict))
        return self._zdict

    def stored_ids(self) -> set[str]:
        return {text(k) for k in self.redis.hkeys(self.k_snap)}

    def unseen_ids(self) -> set[str]:
        """Stored ids the current sweep has not seen."""
        seen = {text(m) for m in self.redis.smembers(self.k_seen)}
        return self.stored_ids() - seen

    def count(self) -> int:
        return int(self.redis.hlen(self.k_snap))

    def seen_count(self) -> int:
        """How many ids the current sweep has seen (0 after an empty listing)."""
        return int(self.redis.scard(self.k_seen))

    def meta(self) -> dict[str, str]:
        return text_hash(self.redis.hgetall(self.k_meta))

    def set_meta(self, **values: str) -> None:
        mapping: dict[Any, Any] = dict(values)
        self.redis.hset(self.k_meta, mapping=mapping)

    # --- writes ----------------------------------------------------------------

    def reset_sweep(self) -> None:
        self.redis.delete(self.k_seen)

    def commit(self, lease: Lease, plan: CommitPlan) -> int:
        """Apply the plan atomically (and release the lease with ``plan.release``); return
        the number of events appended.

        Raises :class:`LeaseLost` when the lease is no longer ours and
        :class:`CommitConflict` when a checked stored value moved.
        """
        compat = "1" if stateformat.compat(self.redis, self.ks) else "0"
        ttl_ms = 0 if plan.release else lease.ttl_ms
        args: list[Any] = [lease.token, ttl_ms, compat, len(plan.checks)]
        for rid, fp in plan.checks.items():
            args += [rid, fp]
        args.append(len(plan.writes))
        zdict = self.dictionary([r for _d, r in plan.writes.values()]) if plan.writes else b""
        for rid, (digest, record) in plan.writes.items():
            args += [rid, pack_record(record, digest, zdict)]
        args.append(len(plan.deletes))
        args += plan.deletes
        args.append(len(plan.events))
        args += plan.events
        args.append(len(plan.seen))
        args += plan.seen
        args.append(len(plan.meta))
        for name, value in plan.meta.items():
            args += [name, value]
        commit_keys = [self.k_lease, self.k_fp, self.k_snap, self.k_meta, self.k_seen]
        if self.wait[0]:
            # WAIT counts the writes of its own connection: one pipeline, one connection.
            pipe = self.redis.pipeline(transaction=False)
            self._commit(keys=[*commit_keys, self.k_outbox], args=args, client=pipe)
            pipe.wait(*self.wait)
            result, acked = pipe.execute()
            if int(result[0]) == 1 and int(acked) < self.wait[0]:
                raise CommitNotReplicated(
                    f"org {self.org_id}: commit acknowledged by {acked} of {self.wait[0]} replicas"
                )
        else:
            result = self._commit(keys=[*commit_keys, self.k_outbox], args=args)
        if int(result[0]) == 1:
            return int(result[1])
        reason = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        if reason == "lease":
            raise LeaseLost(f"org {self.org_id}: lease lost before commit")
        raise CommitConflict(f"org {self.org_id}: record moved during the diff")


def register_org(client: redis.Redis, ks: keys.Keyspace, org_id: str, **facts: Any) -> None:
    """Record an org in the fleet's registry (idempotent; keeps the first discovery time)."""
    raw = client.hget(ks.orgs, org_id)
    if raw is None:
        stateformat.mark_fresh(client, ks)  # only a new org can be an empty Redis's first
    current: dict[str, Any] = json.loads(raw) if raw else {}
    current.setdefault("discovered_at", time.time())
    current.pop("removed_at", None)
    current.update(facts)
    client.hset(ks.orgs, org_id, json.dumps(current, sort_keys=True))


def mark_removed(client: redis.Redis, ks: keys.Keyspace, org_id: str) -> None:
    """An org the organizations endpoint no longer lists: stop polling, keep its state.

    A vanished org is lost access, never deletion: nothing is emitted for it, and
    if discovery lists it again, polling resumes from its watermark.
    """
    from etbridge import confirmations  # the alert's edge (log, Sentry, metric)

    raw = client.hget(ks.orgs, org_id)
    facts: dict[str, Any] = json.loads(raw) if raw else {}
    facts["removed_at"] = time.time()
    client.hset(ks.orgs, org_id, json.dumps(facts, sort_keys=True))
    confirmations.alert_access_lost(
        org_id, "no longer listed by the organizations endpoint", "vanished"
    )


def known_orgs(client: redis.Redis, ks: keys.Keyspace) -> dict[str, dict[str, Any]]:
    """Every org in the registry with its facts (``removed_at`` set for vanished orgs)."""
    return {text(k): json.loads(v) for k, v in sorted(client.hgetall(ks.orgs).items())}


def registered_org_ids(client: redis.Redis, ks: keys.Keyspace) -> set[str]:
    """The ids in the registry, vanished ones included (no facts read: a tick's check)."""
    return {text(k) for k in client.hkeys(ks.orgs)}


def iter_meta(
    client: redis.Redis, ks: keys.Keyspace, org_ids: Iterable[str], resource: str
) -> dict[str, dict[str, str]]:
    """Meta of many orgs in one round trip (for status and the planner)."""
    ids = list(org_ids)
    pipe = client.pipeline(transaction=False)
    for org_id in ids:
        pipe.hgetall(ks.org_meta(org_id, resource))
    out: dict[str, dict[str, str]] = {}
    for org_id, raw in zip(ids, pipe.execute(), strict=True):
        out[org_id] = text_hash(raw)
    return out
