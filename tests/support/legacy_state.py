"""State as etbridge wrote it before snapshot format 3, for the upgrade tests.

A frozen copy of the old writer (state.py and changes.record_digest at commit
e2bc97e): ``fp`` held id -> hex blake2b-128 of the sorted compact JSON, ``snap``
held id -> format byte 1 (generic dictionary) or 2 (the org's) + raw deflate.
``OLD_DIGEST``/``OLD_BLOBS`` are what that code produced for ``SAMPLE``, so a
change to this copy that no longer matches the old code fails its own test.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from etbridge import keys
from etbridge.state import _ZDICT, ORG_DICT_SIZE

SAMPLE: dict[str, Any] = {
    "type": "bookings",
    "id": "7",
    "attributes": {
        "name": "Gala",
        "notes": "Rückruf ☎",
        "guest_count": 80,
        "total_amount": "1200.00",
        "updated_at": "2026-11-27T10:00:00Z",
    },
    "relationships": {"owner": {"data": {"type": "users", "id": "3"}}},
}
OLD_DIGEST = "e98a2f01183316992d10385ff3235b62"
# format 1 of SAMPLE, and format 2 with a dictionary built from [SAMPLE]
OLD_BLOBS = (
    "01433703c56716063a304fb927e62402f5c3bc1a74784f727651699ac2a3197d20635183c7d0c8c0"
    "40cfc0002881cbe9860656062014a5540b8d6673a06a8c78468bbe6a88526384472029a5b6b6168bd700",
    "021bc65e0300",
)


def json_bytes(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def old_digest(record: Mapping[str, Any]) -> str:
    return hashlib.blake2b(json_bytes(record), digest_size=16).hexdigest()


def old_dictionary(records: Sequence[Mapping[str, Any]]) -> bytes:
    return (_ZDICT + b"".join(json_bytes(r) for r in records[:32]))[-ORG_DICT_SIZE:]


def old_blob(record: Mapping[str, Any], zdict: bytes | None = None) -> bytes:
    if zdict:
        comp = zlib.compressobj(level=9, wbits=-15, zdict=zdict)
        return b"\x02" + comp.compress(json_bytes(record)) + comp.flush()
    comp = zlib.compressobj(level=6, wbits=-15, zdict=_ZDICT)
    return b"\x01" + comp.compress(json_bytes(record)) + comp.flush()


def write_old_state(
    client: redis.Redis, org_id: str, resource: str, records: Sequence[Mapping[str, Any]]
) -> None:
    """Store canonical ``records`` as the old commit did: the org's dictionary, fp + snap."""
    client.set(keys.DEFAULT.snapshot_dict(org_id, resource), old_dictionary(records), nx=True)
    zdict = client.get(keys.DEFAULT.snapshot_dict(org_id, resource))
    assert isinstance(zdict, bytes)
    pipe = client.pipeline(transaction=False)
    for record in records:
        pipe.hset(keys.DEFAULT.fingerprints(org_id, resource), record["id"], old_digest(record))
        pipe.hset(keys.DEFAULT.snapshots(org_id, resource), record["id"], old_blob(record, zdict))
    pipe.execute()
