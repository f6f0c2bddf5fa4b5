"""Fixtures of the reliability suite; every test under tests/reliability/ is marked ``reliability``.

Run the suite alone with ``pytest -m reliability``. The short profile runs in CI; set
``FDBS_RELIABILITY=long`` for the long one (more requests, more faults, the soak).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL

from tests.conftest import Backend
from tests.reliability import audit, figures
from tests.reliability.faults import CuttingProxy

LONG = os.environ.get("FDBS_RELIABILITY", "short").lower() == "long"
"""The long profile: opt-in, with ``FDBS_RELIABILITY=long``."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the suite measured (tests/reliability/figures.py)."""
    if figures.FIGURES:
        terminalreporter.section("reliability figures")
        for line in figures.lines():
            terminalreporter.write_line(line)
        figures.save()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """This run's own database on the shared PostgreSQL, then MariaDB, with empty tables."""
    from tests.conftest import _empty_tables

    if request.param == "postgresql":
        url: URL = request.getfixturevalue("postgres_schema")
        backend = Backend("postgresql", url, url.set(drivername="postgresql+asyncpg"))
    else:
        url = request.getfixturevalue("mariadb_schema")
        backend = Backend("mariadb", url, url.set(drivername="mysql+aiomysql"))
    try:
        yield backend
    finally:
        _empty_tables(url)


@pytest.fixture
def audited(server_backend: Backend) -> Iterator[Backend]:
    """``server_backend`` with an empty audit table (tests/reliability/audit.py), dropped after."""
    audit.create_table(server_backend.url)
    try:
        yield server_backend
    finally:
        audit.drop_table(server_backend.url)


@pytest.fixture
def proxy(server_backend: Backend) -> Iterator[CuttingProxy]:
    """A cutting proxy in front of ``server_backend``'s server."""
    url = server_backend.url
    cutting = CuttingProxy(url.host or "127.0.0.1", url.port or 0)
    yield cutting
    cutting.close()
