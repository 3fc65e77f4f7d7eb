"""The README's module list names every module of etbridge/ (and no module that is gone),
and every module's docstring says what it is in a few lines (the write-ups live in docs/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_is_in_the_readme_and_every_named_module_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("Modules (`etbridge/`):") : readme.index("## Figures")]
    modules = {p.name for p in (ROOT / "etbridge").glob("*.py") if not p.name.startswith("__")}
    named = set(re.findall(r"`([a-z_]+\.py)`", listed))
    assert modules - named == set(), "modules missing from the README's list"
    assert named - modules == set(), "the README names modules that do not exist"


def test_module_docstrings_are_at_most_15_lines() -> None:
    long = {}
    for path in sorted((ROOT / "etbridge").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        if len(doc.splitlines()) > 15:
            long[str(path.relative_to(ROOT))] = len(doc.splitlines())
    assert long == {}, "module docstrings over 15 lines: move the write-up to docs/"
