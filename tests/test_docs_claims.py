"""The docs never call a shipped feature planned or missing: they agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fastapi_dbsession.testing
from fastapi_dbsession import DatabaseSessionManager

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"])

# Wording that announces work instead of describing what exists. A page that needs one of these
# for something really missing says "not provided" (and the library does not provide it).
FUTURE_TENSE = re.compile(
    r"\b(is|are) planned\b|\bplanned\b(?= for| feature)|\bnot yet\b|\bcoming soon\b"
    r"|\bin a future (release|version)\b|\bwill be (added|supported|shipped)\b|(?-i:\bTODO\b)",
    re.IGNORECASE,
)

# Features that exist, and claims that they do not (the contradictions issue 17 found).
SHIPPED = [
    (r"plugin is planned|no pytest plugin|pytest plugin is not", "the pytest plugin ships"),
    (r"only (takes|accepts) URLs|engine instances? (is|are) not", "engine= / async_engine="),
    (r"(cannot|can't) (switch|turn) off .{0,40}foreign", "sqlite_pragmas"),
    (r"`?dependency_overrides`? today", "the plugin replaces this workaround"),
]


def test_the_shipped_features_exist() -> None:
    """The features the claims below are checked against are really there."""
    assert "pytest11" in (ROOT / "pyproject.toml").read_text()  # the plugin's entry point
    assert hasattr(fastapi_dbsession.testing, "use_engine")
    arguments = DatabaseSessionManager.__init__.__code__.co_varnames
    assert {"engine", "async_engine", "commit_statuses"} <= set(arguments)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_announces_work_as_planned(page: Path) -> None:
    found = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if FUTURE_TENSE.search(line)
    ]
    assert not found, "describe what exists, or say 'not provided':\n" + "\n".join(found)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_denies_a_shipped_feature(page: Path) -> None:
    text = " ".join(page.read_text().split())  # claims may wrap across lines
    found = [
        f"{page.relative_to(ROOT)}: {match.group(0)!r} ({shipped})"
        for pattern, shipped in SHIPPED
        for match in re.finditer(pattern, text, re.IGNORECASE)
    ]
    assert not found, "\n".join(found)


def test_the_checks_catch_the_claims_issue_17_found() -> None:
    """The patterns match the sentences that used to be in docs/migrating.md / comparison.md."""
    old = [
        "`dependency_overrides` today, a plugin is planned ([Testing](testing.md))",
        "| pytest support | `dependency_overrides` today; a plugin is planned | no |",
    ]
    for line in old:
        assert FUTURE_TENSE.search(line) or any(
            re.search(pattern, line, re.IGNORECASE) for pattern, _ in SHIPPED
        ), line


# `tests/test_x.py::test_name` (or `tests/dir/`) as the docs cite them; a `::name` may also be
# continued on its own (`, ::test_other`), meaning the same file.
CITATION = re.compile(r"(tests/[\w/]+\.py|tests/\w+/)((?:::\w+)?)((?:`?, `?::\w+)*)")


def _citations() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in CITATION.finditer(text):
            path, first, more = match.groups()
            names = [first, *re.findall(r"::\w+", more)] if first else [""]
            for name in names:
                found.append((str(page.relative_to(ROOT)), path, name.removeprefix("::")))
    return sorted(set(found))


@pytest.mark.parametrize(("page", "path", "name"), _citations())
def test_every_cited_test_exists(page: str, path: str, name: str) -> None:
    """A test the docs cite as a proof is there, under that name (renames break citations)."""
    target = ROOT / path
    assert target.exists(), f"{page} cites {path}, which does not exist"
    if name:
        source = target.read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), (
            f"{page} cites {path}::{name}, which is not a test in that file"
        )
