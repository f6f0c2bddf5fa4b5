"""The package keeps the shape docs/architecture.md describes: small modules, small classes.

(The import layers are checked by ``lint-imports`` and private access by ruff's SLF001, both in
scripts/test.sh.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "fastapi_dbsession"
MODULES = sorted(SOURCE.rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def test_the_package_is_where_we_look() -> None:
    assert (SOURCE / "manager.py") in MODULES


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_modules_and_classes_stay_small(module: Path) -> None:
    text = module.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module.name}: split it by job"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{node.name} has {length} lines: two jobs?"
