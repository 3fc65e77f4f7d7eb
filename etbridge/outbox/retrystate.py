"""A partition's retry state, in its hash (``etb:{org:ID}:relay:SINK``): pure reading and writing.

Strict order (the default) keeps one head: ``head``, ``attempts``, ``next_at``,
``error``, ``error_at`` (the later events wait behind it). ``order=none``
keeps one field per failing entry, ``r:<entry id>`` = JSON ``{attempts,
next_at, error, error_at}``, and the others pass it. :class:`RetryState`
answers the relay's questions either way and returns the fields to write
(``""`` deletes one), which the relay writes with its settle script.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Final

ENTRY_PREFIX: Final = "r:"
_STRICT_FIELDS: Final = ("head", "attempts", "next_at", "error", "error_at")


class RetryState:
    """The retry facts of one partition as read at the start of a run."""

    def __init__(self, fields: Mapping[str, str], *, strict: bool) -> None:
        self.strict = strict
        self.fields = dict(fields)

    # -- reading -----------------------------------------------------------------

    def _entry(self, entry_id: str) -> dict[str, object] | None:
        raw = self.fields.get(ENTRY_PREFIX + entry_id)
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def attempts(self, entry_id: str) -> int:
        """Attempts made so far at this entry."""
        if self.strict:
            if self.fields.get("head") != entry_id:
                return 0
            return int(self.fields.get("attempts") or 0)
        found = self._entry(entry_id)
        return int(str(found.get("attempts") or 0)) if found else 0

    def tried(self, entry_id: str) -> bool:
        """Whether an attempt at this entry failed before (no first-attempt wait then)."""
        if self.strict:
            return self.fields.get("head") == entry_id
        return ENTRY_PREFIX + entry_id in self.fields

    def partition_next_at(self) -> float:
        """Strict order: when the head may be tried again (0: now)."""
        return float(self.fields.get("next_at") or 0) if self.strict else 0.0

    def entry_next_at(self, entry_id: str) -> float:
        """``order=none``: when this entry may be tried again (0: now)."""
        found = self._entry(entry_id)
        return float(str(found.get("next_at") or 0)) if found else 0.0

    def retrying(self) -> int:
        """How many entries wait for a retry (strict: 0 or 1)."""
        if self.strict:
            return 1 if self.fields.get("attempts") else 0
        return sum(1 for k in self.fields if k.startswith(ENTRY_PREFIX))

    # -- writing (returns the hash fields to write; applies them here too) ---------

    def failed(
        self, entry_id: str, attempts: int, next_at: float, error: str, now: float
    ) -> dict[str, str]:
        if self.strict:
            update = {
                "head": entry_id,
                "attempts": str(attempts),
                "next_at": repr(next_at),
                "error": error,
                "error_at": repr(now),
            }
        else:
            record = {"attempts": attempts, "next_at": next_at, "error": error, "error_at": now}
            update = {ENTRY_PREFIX + entry_id: json.dumps(record, separators=(",", ":"))}
        return self._apply(update)

    def settled(self, entry_ids: Iterable[str]) -> dict[str, str]:
        """Fields to clear once these entries are acked (delivered or dead-lettered)."""
        if self.strict:
            if self.fields.get("head") is None and not self.fields.get("attempts"):
                return {}
            return self._apply(dict.fromkeys(_STRICT_FIELDS, ""))
        update = {ENTRY_PREFIX + i: "" for i in entry_ids if ENTRY_PREFIX + i in self.fields}
        return self._apply(update)

    def resumed(self) -> dict[str, str]:
        """Fields that make every waiting retry due now, with a fresh schedule (enable)."""
        if self.strict:
            return {"next_at": "", "attempts": ""}
        return {k: "" for k in self.fields if k.startswith(ENTRY_PREFIX)}

    def _apply(self, update: Mapping[str, str]) -> dict[str, str]:
        for name, value in update.items():
            if value == "":
                self.fields.pop(name, None)
            else:
                self.fields[name] = value
        return dict(update)
