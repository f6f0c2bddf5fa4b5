"""Real databases for the tests: SQLite files, and PostgreSQL and MariaDB from the machine.

Each test run creates its own PostgreSQL and MariaDB databases (named after the process, so
parallel runs never meet), creates the tables once, empties them after every test and drops
the databases at the end. Without a server the tests that need it are skipped with a hint,
except under ``CI=true``, where they fail.

Every test that needs a server carries its marker (``postgresql``, ``mariadb``, ``topology``),
so that ``-m "not postgresql and not mariadb and not topology"`` runs with no server at all.
An unmarked test that asks for a server fails, naming the marker to add: parametrize the
``backend`` fixture with :data:`SERVERS` (``SERVERS["postgresql"]``), never with a bare string.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from tests.models import Base

# Hypothesis profiles (tests/test_properties.py): "short" in every run, CI's included (about
# 40 examples a property, a few seconds in all); HYPOTHESIS_PROFILE=long (or pytest's
# --hypothesis-profile=long) runs 1,000 examples a property. No example database: nothing is
# written to .hypothesis/, so every run starts fresh and a failure prints its own example.
_PROPERTY_SETTINGS = {
    "deadline": None,  # connect attempts and event loops: timing varies on a busy machine
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile("short", max_examples=40, **_PROPERTY_SETTINGS)
settings.register_profile("long", max_examples=1000, **_PROPERTY_SETTINGS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "short"))

# Throwaway PostgreSQL clusters and PgBouncer: pg_primary, pg_standby, pg_bouncer, topology.
pytest_plugins = ["tests.topology"]

POSTGRES_URL = os.environ.get(
    "FDBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("FDBS_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

_HOW_TO_ENABLE = {
    "postgresql": "start PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) or set "
    "FDBS_TEST_POSTGRES_URL",
    "mariadb": "start MariaDB on 127.0.0.1:3306 (user root, no password) or set "
    "FDBS_TEST_MARIADB_URL",
}


@dataclass(frozen=True)
class Backend:
    """A test database: the URLs the app uses and a way to look at it from outside."""

    name: str
    url: URL
    async_url: URL

    def admin_engine(self):  # type: ignore[no-untyped-def]
        return create_engine(self.url, poolclass=NullPool)

    def count(self, table: str = "items", where: str = "") -> int:
        """Count rows through a fresh connection: what is really committed."""
        engine = self.admin_engine()
        try:
            with engine.connect() as connection:
                return int(connection.scalar(text(f"SELECT count(*) FROM {table} {where}")))
        finally:
            engine.dispose()

    def names(self) -> list[str]:
        engine = self.admin_engine()
        try:
            with engine.connect() as connection:
                return list(connection.scalars(text("SELECT name FROM items ORDER BY name")))
        finally:
            engine.dispose()


class PoolWatch:
    """Count the connections an engine's pool has handed out and not got back (any pool class)."""

    def __init__(self, engine: object) -> None:
        from sqlalchemy import event

        self.out = 0
        self.checkouts = 0
        sync_engine = getattr(engine, "sync_engine", engine)
        event.listen(sync_engine, "checkout", self._checkout)
        event.listen(sync_engine, "checkin", self._checkin)

    def _checkout(self, *args: object) -> None:
        self.out += 1
        self.checkouts += 1

    def _checkin(self, *args: object) -> None:
        self.out -= 1


SERVERS = {
    "postgresql": pytest.param("postgresql", marks=pytest.mark.postgresql),
    "mariadb": pytest.param("mariadb", marks=pytest.mark.mariadb),
}
"""``backend`` parameters carrying their server's marker: ``parametrize("backend",
[SERVERS["postgresql"]], indirect=True)``. A bare "postgresql" would drop the marker."""

# The fixtures that reach a server, and the marker their tests must carry.
_SERVER_FIXTURES = {
    "postgres_database": "postgresql",
    "postgres_schema": "postgresql",
    "mariadb_database": "mariadb",
    "mariadb_schema": "mariadb",
    "session_topology": "topology",
    "pg_primary": "topology",
    "pg_standby": "topology",
    "pg_bouncer": "topology",
    "topology": "topology",
}


def _require_marker(node: pytest.Item, marker: str) -> None:
    if node.get_closest_marker(marker) is None:
        pytest.fail(
            f"{node.nodeid} needs the {marker} server but is not marked "
            f"@pytest.mark.{marker}, so -m 'not {marker}' would still run it. Mark it, or "
            f'parametrize backend with SERVERS["{marker}"] instead of "{marker}".',
            pytrace=False,
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that uses a server fixture without the server's marker."""
    for fixture in getattr(item, "fixturenames", ()):
        if fixture in _SERVER_FIXTURES:
            _require_marker(item, _SERVER_FIXTURES[fixture])


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _collect_what_a_failed_test_leaked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect the garbage of a failed test in its own teardown, after its fixtures'.

    What a failing test leaked (a connection a broken guard left checked out) would otherwise
    be collected during a later test, failing that one with an unraisable-exception warning.
    pytest keeps the last failure's traceback (``sys.last_*``, for post-mortem debugging),
    and with it the test's frames: dropped first, or nothing could be collected.
    """
    yield
    if request.node.stash.get(_FAILED, False):
        sys.last_type = sys.last_value = sys.last_traceback = None
        if sys.version_info >= (3, 12):
            sys.last_exc = None
        gc.collect()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """No garbage collection while pytest formats a failure.

    A regression that leaks a session (a broken use-after-close guard did) leaves connections
    and greenlets for the garbage collector; collected while pytest parses the test's source
    for the traceback, they end the whole run on CPython 3.11 with ``INTERNALERROR``
    ("SystemError: AST constructor recursion depth mismatch") instead of one failed test.
    """
    if call.excinfo is None:
        return (yield)
    item.stash[_FAILED] = True
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


def _unreachable(name: str, exc: Exception) -> None:
    message = (
        f"{name} is not reachable ({type(exc).__name__}: {exc}); to run these tests, "
        + (_HOW_TO_ENABLE[name])
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def _server_database(name: str, server_url: URL, worker: str) -> Iterator[URL]:
    database = f"fdbs_{worker}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(server_url, poolclass=NullPool).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {database}"))
    except Exception as exc:  # the server is down or refuses us
        admin.dispose()
        _unreachable(name, exc)
    url = server_url.set(database=database)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            if name == "postgresql":
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )
            connection.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_database(worker_id: str) -> Iterator[URL]:
    yield from _server_database("postgresql", make_url(POSTGRES_URL), worker_id)


@pytest.fixture(scope="session")
def mariadb_database(worker_id: str) -> Iterator[URL]:
    yield from _server_database("mariadb", make_url(MARIADB_URL), worker_id)


@pytest.fixture(scope="session")
def worker_id() -> str:
    """pytest-xdist's worker name when it runs us, else "main" (overridden by xdist)."""
    return "main"


def _create_schema(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        for metadata in (Base.metadata, SQLModel.metadata):
            metadata.drop_all(engine)
            metadata.create_all(engine)
    finally:
        engine.dispose()


def _empty_tables(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for metadata in (Base.metadata, SQLModel.metadata):
                for table in reversed(metadata.sorted_tables):
                    connection.execute(table.delete())
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_schema(postgres_database: URL) -> URL:
    _create_schema(postgres_database)
    return postgres_database


@pytest.fixture(scope="session")
def mariadb_schema(mariadb_database: URL) -> URL:
    _create_schema(mariadb_database)
    return mariadb_database


def _make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if name != "sqlite":  # reached through a parameter: the item's markers are the only record
        _require_marker(request.node, name)
    if name == "sqlite":
        url = make_url(f"sqlite:///{tmp_path / 'app.db'}")
        _create_schema(url)
        yield Backend(name, url, url.set(drivername="sqlite+aiosqlite"))
        return
    if name == "postgresql":
        url = request.getfixturevalue("postgres_schema")
        async_url = url.set(drivername="postgresql+asyncpg")
    else:
        url = request.getfixturevalue("mariadb_schema")
        async_url = url.set(drivername="mysql+aiomysql")
    try:
        yield Backend(name, url, async_url)
    finally:
        _empty_tables(url)


@pytest.fixture(params=["sqlite", SERVERS["postgresql"], SERVERS["mariadb"]])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend in turn, with empty tables."""
    yield from _make_backend(request.param, request, tmp_path)


@pytest.fixture(params=["sync", "async"])
def side(request: pytest.FixtureRequest) -> str:
    """Run the test against the sync routes and the async routes."""
    return str(request.param)
