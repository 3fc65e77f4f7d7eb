"""The README's module list names every module of etbridge/ (and no module that is gone)."""

from __future__ import annotations

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
