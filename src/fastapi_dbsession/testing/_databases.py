"""Create, migrate and drop a database for a test run, and point a manager at it."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from fastapi_dbsession import _urls
from fastapi_dbsession.errors import ConfigurationError

from ._seam import database_of

if TYPE_CHECKING:
    from sqlalchemy import MetaData

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
        _admin(base, f"DROP DATABASE IF EXISTS {target.database}")
        _admin(base, f"CREATE DATABASE {target.database}")
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
    server = target.set(database="postgres" if backend == "postgresql" else None)
    if backend == "postgresql":
        _admin(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{target.database}' AND pid <> pg_backend_pid()",
        )
    _admin(server, f"DROP DATABASE IF EXISTS {target.database}")


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


def _admin(server: URL, sql: str) -> None:
    sync_server = server
    if _urls.is_async_driver(server):
        twin = _urls.sync_twin(server)
        if twin is None:
            raise ConfigurationError(f"No sync driver known for {_urls.render(server)}.")
        sync_server = twin
    engine = create_engine(sync_server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(sql))
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
