"""Create, migrate and drop a database for a test run, and point a manager at it."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from fastapi_dbsession import _urls
from fastapi_dbsession.errors import ConfigurationError

from ._seam import database_of

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from fastapi_dbsession._config import Config
    from fastapi_dbsession.manager import DatabaseSessionManager


def create_test_database(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_ini: str | Path | None = None,
    suffix: str | None = None,
) -> URL:
    """Create an empty database next to ``url`` and build its schema; return its URL.

    PostgreSQL and MariaDB/MySQL get a new database named ``<name>_test_<suffix>``; a SQLite
    file URL gets a new temporary file; in-memory SQLite is returned as is. The schema comes
    from ``metadata.create_all()`` or from ``alembic upgrade head`` with ``alembic_ini``.

    Args:
        url: A URL on the server to use (its database name is the base of the new name).
        metadata: Tables to create.
        alembic_ini: An Alembic configuration to migrate with instead.
        suffix: Distinguishes parallel runs (pytest-xdist workers); random if omitted.

    Raises:
        ConfigurationError: The backend is not supported.
    """
    base = _urls.parse(url, argument="url")
    suffix = suffix or uuid.uuid4().hex[:8]
    backend = base.get_backend_name()
    if backend == "sqlite":
        if _urls.is_sqlite_memory(base):
            target = base
        else:
            handle, path = tempfile.mkstemp(prefix=f"test_{suffix}_", suffix=".db")
            os.close(handle)
            target = base.set(database=path)
    elif backend in ("postgresql", "mysql", "mariadb"):
        target = base.set(database=f"{base.database or 'app'}_test_{suffix}")
        _admin(base, "DROP DATABASE IF EXISTS {name}", target.database)
        _admin(base, "CREATE DATABASE {name}", target.database)
    else:
        raise ConfigurationError(
            f"create_test_database() supports SQLite, PostgreSQL and MariaDB/MySQL, not "
            f"{backend!r} ({_urls.render(base)}). Create the database yourself and pass its URL."
        )
    _build_schema(target, metadata, alembic_ini)
    return target


def drop_test_database(url: str | URL) -> None:
    """Drop a database made by :func:`create_test_database` (ends its open connections)."""
    target = _urls.parse(url, argument="url")
    backend = target.get_backend_name()
    if backend == "sqlite":
        if not _urls.is_sqlite_memory(target) and target.database:
            Path(target.database).unlink(missing_ok=True)
        return
    server = (  # URL.set(database=None) would keep the name: build the server URL anew
        target.set(database="postgres")
        if backend == "postgresql"
        else URL.create(
            target.drivername,
            username=target.username,
            password=target.password,
            host=target.host,
            port=target.port,
            query=target.query,
        )
    )
    if backend == "postgresql":
        _admin(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :datname AND pid <> pg_backend_pid()",
            target.database,
        )
    _admin(server, "DROP DATABASE IF EXISTS {name}", target.database)


def use_database(db: DatabaseSessionManager, url: str | URL) -> None:
    """Point ``db`` (sync side and derived async side) at ``url``; engines are rebuilt.

    The async twin keeps the async driver the manager had (e.g. asyncpg), on the new database.
    """
    target = _urls.parse(url, argument="url")
    sync_url = target if db.url is not None else None
    async_url = None
    if db.async_url is not None:
        async_url = target.set(drivername=db.async_url.drivername)
        if target.get_backend_name() == "sqlite" and _urls.is_async_driver(target):
            async_url = target
    if sync_url is not None and _urls.is_async_driver(sync_url):
        sync_url = _urls.sync_twin(sync_url)
    database_of(db).repoint(sync_url, async_url)


class EngineSwap:
    """What :func:`use_engine` returns: ``restore()`` it, or use it as a ``with`` block."""

    __slots__ = ("_database", "_previous", "db")

    def __init__(self, db: DatabaseSessionManager, previous: Config) -> None:
        self.db = db
        self._database = database_of(db)
        self._previous = previous

    def restore(self) -> None:
        """Point the manager back where it was (the test's engines are left to the test)."""
        self._database.reconfigure(self._previous)

    def __enter__(self) -> DatabaseSessionManager:
        return self.db

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()


def use_engine(
    db: DatabaseSessionManager,
    engine: Engine | None = None,
    *,
    async_engine: AsyncEngine | None = None,
) -> EngineSwap:
    """Point ``db`` at engines the test suite built, e.g. an in-memory SQLite one.

    From now on every session ``db`` opens (request sessions, units, ``isolated()``) uses them
    as they are; a side without an engine here has none until restored (so nothing reaches
    the old database by mistake). The engines the manager had built are disposed; the given
    ones never are. Call ``restore()`` on the result, or use it as a ``with`` block.

    Args:
        db: The app's manager.
        engine: The sync engine to use.
        async_engine: The async engine to use.

    Raises:
        ConfigurationError: Neither engine given, or one of the wrong type.

    Example:
        >>> engine = create_engine("sqlite://", poolclass=StaticPool)
        >>> SQLModel.metadata.create_all(engine)
        >>> with use_engine(db, engine), TestClient(app) as client:
        ...     client.post("/heroes/", json={"name": "Deadpond"})
    """
    database = database_of(db)
    previous = database.config
    database.reconfigure(previous.with_engines(engine, async_engine))
    return EngineSwap(db, previous)


def _admin(server: URL, sql: str, database: str | None) -> None:
    """Run ``sql`` on the server: ``{name}`` is the quoted database name, ``:datname`` bound."""
    if not database:
        raise ConfigurationError(f"No database name in {_urls.render(server)}.")
    sync_server = server
    if _urls.is_async_driver(server):
        twin = _urls.sync_twin(server)
        if twin is None:
            raise ConfigurationError(f"No sync driver known for {_urls.render(server)}.")
        sync_server = twin
    engine = create_engine(sync_server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        quoted = engine.dialect.identifier_preparer.quote_identifier(database)
        with engine.connect() as connection:
            parameters = {"datname": database} if ":datname" in sql else {}
            connection.execute(text(sql.format(name=quoted)), parameters)
    finally:
        engine.dispose()


def _build_schema(target: URL, metadata: MetaData | None, alembic_ini: str | Path | None) -> None:
    sync_target = _urls.sync_twin(target) if _urls.is_async_driver(target) else target
    assert sync_target is not None
    if alembic_ini is not None:
        try:
            from alembic import command
            from alembic.config import Config
        except ImportError:
            raise ConfigurationError(
                "alembic_ini was given but Alembic is not installed: pip install alembic."
            ) from None
        config = Config(str(alembic_ini))
        config.set_main_option(
            "sqlalchemy.url",
            sync_target.render_as_string(hide_password=False).replace("%", "%%"),
        )
        command.upgrade(config, "head")
    elif metadata is not None:
        engine = create_engine(sync_target, poolclass=NullPool)
        try:
            metadata.create_all(engine)
        finally:
            engine.dispose()
