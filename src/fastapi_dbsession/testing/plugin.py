"""The pytest plugin: per-test rollback isolation, query counting, a test database, leak checks.

Registered through the ``pytest11`` entry point. It only acts when a test asks for one of its
fixtures (or when ``dbsession_leak_check`` is switched on), so installing the package changes
nothing for other projects.

Point it at your manager in ``pyproject.toml``::

    [tool.pytest.ini_options]
    dbsession_manager = "myapp.database:db"
    dbsession_metadata = "myapp.models:Base"        # tables for the test database
    dbsession_create_database = true                # a fresh database per run (per xdist worker)

or override the ``dbsession_manager`` fixture in your ``conftest.py``.

Fixtures: ``dbsession_manager``, ``dbsession_database``, ``db_isolation``, ``db_session``,
``count_queries``, ``assert_max_queries``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import MetaData, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from fastapi_dbsession import _urls
from fastapi_dbsession.manager import DatabaseSessionManager
from fastapi_dbsession.testing._databases import (
    create_test_database,
    drop_test_database,
    use_database,
)
from fastapi_dbsession.testing._isolation import isolated
from fastapi_dbsession.testing._queries import QueryCount
from fastapi_dbsession.testing._queries import assert_max_queries as _assert_max_queries
from fastapi_dbsession.testing._queries import count_queries as _count_queries
from fastapi_dbsession.testing._retries import retries_disabled
from fastapi_dbsession.testing._seam import database_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_SNAPSHOT = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "dbsession_manager",
        'Import path of the app\'s DatabaseSessionManager, "package.module:attribute".',
    )
    parser.addini(
        "dbsession_metadata",
        "Import path of the MetaData (or declarative Base) to create in the test database, "
        '"package.module:Base".',
    )
    parser.addini(
        "dbsession_alembic_ini",
        "Path of an alembic.ini: migrate the test database with 'alembic upgrade head' instead.",
    )
    parser.addini(
        "dbsession_create_database",
        "Create a fresh database for the test run (one per xdist worker) and drop it after.",
        type="bool",
        default=False,
    )
    parser.addini(
        "dbsession_leak_check",
        "Fail a test that does not use db_isolation and leaves rows behind in any table.",
        type="bool",
        default=False,
    )


def _import(path: str, option: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise pytest.UsageError(f'{option} = "{path}" must look like "package.module:attribute".')
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def _metadata(config: pytest.Config) -> MetaData | None:
    path = config.getini("dbsession_metadata")
    if not path:
        return None
    value = _import(path, "dbsession_metadata")
    metadata = value if isinstance(value, MetaData) else getattr(value, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise pytest.UsageError(
            f"dbsession_metadata = {path!r} is neither a MetaData nor a declarative Base."
        )
    return metadata


@pytest.fixture(scope="session")
def dbsession_manager(pytestconfig: pytest.Config) -> DatabaseSessionManager:
    """The app's manager, from the ``dbsession_manager`` ini option (override to choose)."""
    path = pytestconfig.getini("dbsession_manager")
    if not path:
        raise pytest.UsageError(
            "fastapi-dbsession's fixtures need your DatabaseSessionManager. Add "
            'dbsession_manager = "myapp.database:db" to [tool.pytest.ini_options], or define '
            "a dbsession_manager fixture in conftest.py that returns it."
        )
    manager = _import(path, "dbsession_manager")
    if not isinstance(manager, DatabaseSessionManager):
        raise pytest.UsageError(f"dbsession_manager = {path!r} is not a DatabaseSessionManager.")
    return manager


@pytest.fixture(scope="session")
def dbsession_database(
    dbsession_manager: DatabaseSessionManager, pytestconfig: pytest.Config
) -> Iterator[URL | None]:
    """The database the tests use: with ``dbsession_create_database``, a fresh one per run.

    The new database (one per pytest-xdist worker) gets its tables from ``dbsession_metadata``
    or ``dbsession_alembic_ini`` once, the manager is pointed at it for the run, and it is
    dropped at the end. Without the option, the manager's own URL is used as it is.
    """
    manager = dbsession_manager
    if not pytestconfig.getini("dbsession_create_database"):
        yield manager.url or manager.async_url
        return
    base = manager.url or manager.async_url
    assert base is not None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    url = create_test_database(
        base,
        metadata=_metadata(pytestconfig),
        alembic_ini=pytestconfig.getini("dbsession_alembic_ini") or None,
        suffix=f"{worker}_{os.getpid()}",
    )
    database = database_of(manager)
    original = database.config  # URLs or given engines, to come back to
    use_database(manager, url)
    try:
        yield url
    finally:
        manager.dispose()
        database.reconfigure(original)
        drop_test_database(url)


@pytest.fixture
def db_isolation(
    dbsession_manager: DatabaseSessionManager, dbsession_database: URL | None
) -> Iterator[DatabaseSessionManager]:
    """Run the test inside one outer transaction that is rolled back at its end.

    Every session the app opens meanwhile (requests through TestClient or httpx,
    ``db.transaction()``, ``@transactional`` with any propagation) joins it through a
    SAVEPOINT, so even the app's own commits are undone.
    """
    with isolated(dbsession_manager):
        yield dbsession_manager


@pytest.fixture
def db_session(db_isolation: DatabaseSessionManager) -> Iterator[Session]:
    """A sync session inside the test's outer transaction, for test data the app will see."""
    session = database_of(db_isolation).new_session()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def count_queries(
    dbsession_manager: DatabaseSessionManager,
) -> Callable[[], AbstractContextManager[QueryCount]]:
    """``with count_queries() as queries: ...`` then ``len(queries)``, ``queries.statements``."""
    return lambda: _count_queries(dbsession_manager)


@pytest.fixture
def assert_max_queries(
    dbsession_manager: DatabaseSessionManager,
) -> Callable[[int], AbstractContextManager[QueryCount]]:
    """``with assert_max_queries(2): ...`` fails, listing the SQL, when more statements run."""
    return lambda limit: _assert_max_queries(dbsession_manager, limit)


@pytest.fixture
def db_no_retries() -> Iterator[None]:
    """Switch ``@transactional(retries=N)`` off for the test: conflicts raise at once."""
    with retries_disabled():
        yield


# -- opt-in leak check ---------------------------------------------------------------------


def _leak_check_applies(item: pytest.Item) -> bool:
    if not item.config.getini("dbsession_leak_check"):
        return False
    return "db_isolation" not in getattr(item, "fixturenames", ())


def _row_counts(config: pytest.Config) -> dict[str, int]:
    metadata = _metadata(config)
    if metadata is None:
        raise pytest.UsageError("dbsession_leak_check needs dbsession_metadata to know the tables.")
    manager = _import(config.getini("dbsession_manager"), "dbsession_manager")
    url = manager.url or _urls.sync_twin(manager.async_url)
    assert url is not None
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {
                table.name: int(connection.scalar(select(func.count()).select_from(table)) or 0)
                for table in metadata.sorted_tables
            }
    finally:
        engine.dispose()


@pytest.hookimpl(trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _leak_check_applies(item):
        item.stash[_SNAPSHOT] = _row_counts(item.config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield  # the test's own fixtures are torn down first
    before = item.stash.get(_SNAPSHOT, None)
    if before is None:
        return
    after = _row_counts(item.config)
    leaked = {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0)
    }
    if leaked:
        shown = ", ".join(f"{name} {change:+d} rows" for name, change in sorted(leaked.items()))
        pytest.fail(
            f"{item.nodeid} changed committed data without the db_isolation fixture: {shown}. "
            "Add db_isolation (or db_session) to the test so everything the app commits is "
            "rolled back when it ends.",
            pytrace=False,
        )
