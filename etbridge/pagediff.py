"""One page's diff, pure: the schema-drift step, then the record diff, as one plan.

:func:`diff_page` is what the poller does with the records of a page whose
stored digests differ: watch the attribute names for drift (docs/changes.md),
diff the records against their stored versions with drifted names absorbed,
and say what to write, emit and remember. The poller reads the inputs from
Redis and commits the result; nothing here touches Redis, HTTP or Celery.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from etbridge.changes import (
    Change,
    JsonObj,
    SchemaChange,
    Stored,
    diff_records,
    page_fields,
    schema_drift,
)

__all__ = ["PageDiff", "diff_page", "schema_memory"]

# The org's meta hash keeps the schema memory as JSON lists under these fields.
_KNOWN, _ABSORBED = "attrs", "absorbed"


@dataclass
class PageDiff:
    """What one page moves: events, snapshot writes and the schema memory.

    ``drift`` (a ``schema.changed``, emitted before ``changes``); ``writes``:
    every moved record, rewritten so the next poll takes the fast path;
    ``known``/``absorbed``: the schema memory after this page; ``meta``: its
    meta-hash fields, only those that changed.
    """

    known: set[str]
    absorbed: set[str]
    drift: SchemaChange | None = None
    changes: list[Change] = field(default_factory=list)
    writes: list[JsonObj] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)


def schema_memory(meta: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """``(known, absorbed)`` as the org's meta hash keeps them (empty when unset)."""
    return set(json.loads(meta.get(_KNOWN, "[]"))), set(json.loads(meta.get(_ABSORBED, "[]")))


def diff_page(
    resource: str,
    records: Sequence[JsonObj],
    stored: Mapping[str, Stored | None],
    ignore_fields: Collection[str],
    *,
    known: set[str],
    absorbed: set[str],
    baseline: bool = False,
    emit_baseline: bool = False,
) -> PageDiff:
    """Diff a page of canonical records: schema drift first, then the moved records.

    ``stored`` holds the page's *moved* records only (digest differs from the
    stored one): id -> what state holds, ``None`` for never stored. Records not
    in it are unchanged and cost nothing; a page with no moved record moves
    nothing (not even the schema memory). ``known`` empty (the baseline):
    no drift, ``known`` becomes the page's names.
    """
    if not stored:
        return PageDiff(known, absorbed)
    drift = schema_drift(resource, known, records) if known else None
    removed = set(drift.removed) if drift is not None else set()
    new_known = (known | page_fields(records)) - removed
    new_absorbed = absorbed | set(drift.added) | removed if drift is not None else absorbed
    moved = [r for r in records if r["id"] in stored]
    diff = diff_records(
        resource,
        {r["id"]: stored[r["id"]] for r in moved},
        moved,
        ignore_fields,
        baseline=baseline,
        emit_baseline=emit_baseline,
        absorb=new_absorbed,
    )
    out = PageDiff(new_known, new_absorbed, drift, diff.changes, moved)
    if new_known != known:
        out.meta[_KNOWN] = json.dumps(sorted(new_known))
    if new_absorbed != absorbed:
        out.meta[_ABSORBED] = json.dumps(sorted(new_absorbed))
    return out
