"""Compare the events a sink received with the sandbox's truth.

Run with ``ETBRIDGE_EMIT_BASELINE=true`` so every booking has a first event
(``snapshot``) and the last event of each booking can be checked against the
truth. Returns a list of problems; empty means the stream is right.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable
from typing import Any

from etbridge import changes


def _strip(record: dict[str, Any] | None, ignore: Collection[str]) -> Any:
    if record is None:
        return None
    attrs = {
        k: v
        for k, v in (record.get("attributes") or {}).items()
        if k not in ignore and v is not None
    }
    return {"id": record.get("id"), "attributes": attrs, "relationships": _linkages(record)}


def _linkages(record: dict[str, Any]) -> dict[str, Any]:
    """Relationship name -> linkage ``data``; a null linkage is the same as none."""
    out = {}
    for name, rel in (record.get("relationships") or {}).items():
        data = rel.get("data") if isinstance(rel, dict) else rel
        if data is not None:
            out[name] = data
    return out


def expected_changes(
    before: dict[str, Any], after: dict[str, Any], ignore: Collection[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    b_attrs, a_attrs = before.get("attributes") or {}, after.get("attributes") or {}
    for name in sorted(set(b_attrs) | set(a_attrs)):
        if name in ignore:
            continue
        if b_attrs.get(name) != a_attrs.get(name):
            out[name] = {"from": b_attrs.get(name), "to": a_attrs.get(name)}
    b_rels, a_rels = _linkages(before), _linkages(after)
    for name in sorted(set(b_rels) | set(a_rels)):
        if b_rels.get(name) != a_rels.get(name):
            out[f"relationships.{name}"] = {"from": b_rels.get(name), "to": a_rels.get(name)}
    return out


def _against_truth(
    last: dict[tuple[str, str], dict[str, Any]],
    truth: dict[str, Any],
    ignore: Collection[str],
) -> list[str]:
    """Each record's last event against the sandbox's truth (and its deletions)."""
    problems: list[str] = []
    for org_id, org in truth["orgs"].items():
        for rid, record in org["bookings"].items():
            found = last.get((org_id, rid))
            if found is None:
                problems.append(f"org {org_id} booking {rid}: no event at all")
                continue
            if found["type"].endswith(".deleted"):
                problems.append(f"org {org_id} booking {rid}: announced deleted but exists")
                continue
            got = _strip(found["data"]["after"], ignore)
            want = _strip(changes.canonical(record), ignore)
            if got != want:
                problems.append(f"org {org_id} booking {rid}: last after differs from the truth")
        for rid in org.get("deleted", []):
            found = last.get((org_id, rid))
            if found is not None and not found["type"].endswith(".deleted"):
                problems.append(f"org {org_id} booking {rid}: deleted, not announced")
    return problems


def grade(
    events: Iterable[dict[str, Any]],
    truth: dict[str, Any],
    ignore: Collection[str] = ("updated_at",),
) -> list[str]:
    """Problems with ``events`` (in arrival order) against ``truth`` (sandbox /_admin/truth)."""
    problems: list[str] = []
    events = list(events)
    ids = Counter(e["id"] for e in events)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        problems.append(f"{len(dup)} event ids delivered more than once, e.g. {dup[0]}")
    pairs = Counter(
        (
            e.get("orgid"),
            e.get("subject"),
            json.dumps(e["data"].get("before"), sort_keys=True),
            json.dumps(e["data"].get("after"), sort_keys=True),
        )
        for e in events
        if not e["type"].endswith("schema.changed")
    )
    if pairs and max(pairs.values()) > 1:
        problems.append("two events share the same before/after")
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for env in events:
        if env["type"].endswith("schema.changed"):
            continue
        data = env["data"]
        if env["type"].endswith(".updated"):
            want = expected_changes(data["before"], data["after"], ignore)
            if data["changes"] != want:
                problems.append(f"event {env['id']}: changes {data['changes']} != {want}")
        last[(env["orgid"], env["subject"])] = env
    problems += _against_truth(last, truth, ignore)
    return problems
