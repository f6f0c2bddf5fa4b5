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
MAX_MANAGER_LINES = 250


def test_the_package_is_where_we_look() -> None:
    assert (SOURCE / "manager.py") in MODULES


def test_the_manager_stays_a_thin_facade() -> None:
    """Issue 12: manager.py at most 250 lines; new method groups go into a ``_facets`` module."""
    lines = len((SOURCE / "manager.py").read_text().splitlines())
    assert lines <= MAX_MANAGER_LINES, f"manager.py has {lines} lines: add a facet instead"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_modules_and_classes_stay_small(module: Path) -> None:
    text = module.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module.name}: split it by job"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{node.name} has {length} lines: two jobs?"


TESTS = Path(__file__).resolve().parent

# The tests that import a private module of the package, and why: each is the unit under test,
# a pure piece whose properties no request can pin down deterministically. Every other test
# goes through the public API (or the testing seam, fastapi_dbsession.testing._seam).
PRIVATE_UNITS_UNDER_TEST = {
    # FIFO order among waiters, and a permit granted to a waiter cancelled before it ran
    ("test_capacity.py", "fastapi_dbsession._capacity"),
    # the masking functions: a longer secret before a shorter one, every URL encoding
    ("test_secrets.py", "fastapi_dbsession._secrets"),
    # ... and a URL's own secrets in free text: no driver we can run quotes a password bare
    ("test_secrets.py", "fastapi_dbsession._urls"),
}


def _private_imports(path: Path) -> set[tuple[str, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_")]
            if parts[0] != "fastapi_dbsession" or not private:
                continue
            module = ".".join(parts[: private[0] + 1])  # up to the first private part
            if module != "fastapi_dbsession.testing._seam":
                found.add((str(path.relative_to(TESTS)), module))
    return found


def test_tests_reach_private_modules_only_where_they_are_the_unit_under_test() -> None:
    found: set[tuple[str, str]] = set()
    for path in sorted(TESTS.rglob("*.py")):
        found |= _private_imports(path)
    assert found == PRIVATE_UNITS_UNDER_TEST, (
        "test through the public API, or add the module to PRIVATE_UNITS_UNDER_TEST with why"
    )
