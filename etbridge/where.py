"""Value filters of sink URLs (``?where=PATH:VALUE``): parsing and matching, pure.

``PATH`` is a dotted path into the CloudEvents envelope; ``PATH:V1|V2`` holds
when the value's JSON text is one of the values, ``PATH!:VALUE`` when it is
none of them or the path is absent, ``PATH:*`` when the path is present (and
not ``null``), ``PATH!:*`` when it is absent. Several clauses must all hold.
Values compare as strings against the JSON value's text: ``true``, ``12``,
``definite`` (a string's text is the string itself, unquoted).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Where", "matches", "parse_where", "value_text"]

_MISSING: Any = object()


@dataclass(frozen=True)
class Where:
    """One ``where=`` clause. ``values`` is empty for ``PATH:*`` (presence)."""

    path: tuple[str, ...]
    values: frozenset[str] = frozenset()
    negate: bool = False

    @property
    def presence(self) -> bool:
        return not self.values

    def holds(self, envelope: Mapping[str, Any]) -> bool:
        """Whether this clause holds for an envelope."""
        found = lookup(envelope, self.path)
        if not self.values:
            return (found is not _MISSING and found is not None) != self.negate
        if found is _MISSING:
            return self.negate
        text = found if type(found) is str else value_text(found)
        return (text in self.values) != self.negate

    def predicate(self) -> Callable[[Mapping[str, Any]], bool]:
        """:meth:`holds` as one closure (what a sink's compiled filter calls per event)."""
        path, values, negate = self.path, self.values, self.negate

        def holds(envelope: Mapping[str, Any]) -> bool:
            node: Any = envelope
            try:
                for part in path:
                    node = node[part]
            except (KeyError, TypeError, IndexError):
                node = _walk(envelope, path)
            if not values:
                return (node is not _MISSING and node is not None) != negate
            if node is _MISSING:
                return negate
            return ((node if type(node) is str else value_text(node)) in values) != negate

        return holds

    def __str__(self) -> str:
        values = "*" if self.presence else "|".join(sorted(self.values))
        return f"{'.'.join(self.path)}{'!' if self.negate else ''}:{values}"


def parse_where(text: str) -> Where:
    """Parse one clause; ``ValueError`` (a message without the sink URL) when malformed.

    >>> str(parse_where("data.changes.status.to:definite|tentative"))
    'data.changes.status.to:definite|tentative'
    """
    path_text, sep, value_text_ = text.partition(":")
    if not sep:
        raise ValueError(f"where={text!r}: expected PATH:VALUE, PATH!:VALUE or PATH:*")
    negate = path_text.endswith("!")
    path_text = path_text.removesuffix("!").strip()
    path = tuple(path_text.split("."))
    if not path_text or any(not part.strip() for part in path):
        raise ValueError(f"where={text!r}: the path needs dotted names, e.g. data.changes.status")
    if value_text_ == "*":
        return Where(tuple(p.strip() for p in path), frozenset(), negate)
    values = value_text_.split("|")
    if any(v == "" for v in values):
        raise ValueError(f"where={text!r}: empty value (use PATH:* to test presence)")
    return Where(tuple(p.strip() for p in path), frozenset(values), negate)


def parse_all(texts: Iterable[str]) -> tuple[Where, ...]:
    """Every clause of a sink URL, in order."""
    return tuple(parse_where(t) for t in texts)


def matches(clauses: Sequence[Where], envelope: Mapping[str, Any]) -> bool:
    """Whether every clause holds (no clause: everything matches)."""
    return all(clause.holds(envelope) for clause in clauses)


def lookup(value: Any, path: Sequence[str]) -> Any:
    """The value at a dotted path, or the module's missing marker.

    A key may hold dots itself (``changes`` names relationships
    ``relationships.room``): where no plain key matches, the dotted keys are
    tried, shortest first. A list takes a decimal index.
    """
    # The common case first, at the cost of one dict get per level: this runs for
    # every event of a filtered sink. Anything unusual takes the careful walk.
    node = value
    try:
        for part in path:
            node = node[part]
    except (KeyError, TypeError, IndexError):
        return _walk(value, path)
    return node


def _walk(value: Any, path: Sequence[str]) -> Any:
    node = value
    for index, part in enumerate(path):
        # type() rather than isinstance(): JSON gives plain dicts and lists.
        kind = type(node)
        if kind is dict:
            if part in node:
                node = node[part]
                continue
            return _dotted(node, path[index:])
        if kind is list and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        return _MISSING
    return node


def _dotted(node: dict[str, Any], path: Sequence[str]) -> Any:
    for size in range(2, len(path) + 1):
        key = ".".join(path[:size])
        if key in node:
            found = _walk(node[key], path[size:])
            if found is not _MISSING:
                return found
    return _MISSING


def value_text(value: Any) -> str:
    """The text a value compares as: a string itself, anything else its compact JSON.

    >>> [value_text(v) for v in ("definite", True, 12, None, 1.5)]
    ['definite', 'true', '12', 'null', '1.5']
    """
    if type(value) is str:
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
