"""DatabaseSessionManager: URLs, twins, defaults, bad configuration, secrets, lifespan."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool, StaticPool

from fastapi_dbsession import (
    ConfigurationError,
    DatabaseSessionManager,
    DatabaseUnavailableError,
    DBSessionError,
    MissingDriverError,
)
from tests.conftest import Backend
from tests.models import Item

SENTINEL = "s3cr3t-Sentinel-pw"


@pytest.mark.parametrize(
    ("url", "async_url"),
    [
        ("sqlite:///./app.db", "sqlite+aiosqlite:///./app.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql+psycopg://app@db/app", "postgresql+psycopg://app@db/app"),
        ("postgresql://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("postgresql+psycopg2://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("mysql+pymysql://app@db/app", "mysql+aiomysql://app@db/app"),
        ("mysql://app@db/app", "mysql+aiomysql://app@db/app"),
        ("mariadb+pymysql://app@db/app", "mariadb+aiomysql://app@db/app"),
    ],
)
def test_async_twin_is_derived_from_the_sync_url(url: str, async_url: str) -> None:
    db = DatabaseSessionManager(url)

    assert str(db.url) == url
    assert str(db.async_url) == async_url


@pytest.mark.parametrize(
    ("async_url", "sync_url"),
    [
        ("postgresql+asyncpg://app@db/app", "postgresql+psycopg://app@db/app"),
        ("sqlite+aiosqlite:///./app.db", "sqlite+pysqlite:///./app.db"),
        ("mysql+aiomysql://app@db/app", "mysql+pymysql://app@db/app"),
        ("mysql+asyncmy://app@db/app", "mysql+pymysql://app@db/app"),
    ],
)
def test_sync_twin_is_derived_from_an_async_url(async_url: str, sync_url: str) -> None:
    for db in (
        DatabaseSessionManager(async_url=async_url),
        DatabaseSessionManager(async_url),  # an asyncio URL given positionally is the async one
    ):
        assert str(db.async_url) == async_url
        assert str(db.url) == sync_url


def test_explicit_async_url_wins_over_the_derived_twin() -> None:
    db = DatabaseSessionManager(
        "postgresql+psycopg://app@db/app", async_url="postgresql+asyncpg://app@db/app"
    )
    assert db.async_url is not None
    assert db.async_url.drivername == "postgresql+asyncpg"


def test_no_twin_known_says_what_to_pass() -> None:
    db = DatabaseSessionManager("oracle+oracledb://app@db/app")
    assert db.async_url is None
    with pytest.raises(ConfigurationError, match="async_url="):
        _ = db.async_engine


def test_no_url_at_all_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs a database URL"):
        DatabaseSessionManager()


def test_malformed_url_is_explained_without_its_password() -> None:
    with pytest.raises(ConfigurationError, match="not a valid database URL") as caught:
        DatabaseSessionManager(f"postgresql://app:{SENTINEL}@db:notaport/app")
    assert SENTINEL not in str(caught.value)


def test_url_of_the_wrong_type() -> None:
    with pytest.raises(ConfigurationError, match="must be a database URL string"):
        DatabaseSessionManager(42)  # type: ignore[arg-type]


def test_unknown_driver_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="no driver 'nosuchdriver' for 'postgresql'"):
        DatabaseSessionManager("postgresql+nosuchdriver://app@db/app")


def test_a_driver_without_a_known_package_names_its_module() -> None:
    db = DatabaseSessionManager("mssql+pyodbc://app@db/app")  # pyodbc absent
    with pytest.raises(MissingDriverError) as caught:
        _ = db.engine
    assert str(caught.value) == (
        "The sync engine for mssql+pyodbc://app@db/app needs the Python module 'pyodbc', "
        "which is not installed. Install it with: pip install pyodbc."
    )


def test_an_async_driver_with_no_known_sync_twin_gives_no_sync_side() -> None:
    db = DatabaseSessionManager(async_url="mssql+aioodbc://app@db/app")
    assert db.url is None
    assert db.async_url is not None
    assert db.async_url.drivername == "mssql+aioodbc"


def test_missing_driver_names_what_to_install() -> None:
    db = DatabaseSessionManager(f"mysql+mysqldb://app:{SENTINEL}@db/app")  # mysqlclient absent
    with pytest.raises(MissingDriverError, match="pip install mysqlclient") as caught:
        _ = db.engine
    assert isinstance(caught.value, ImportError)
    assert SENTINEL not in str(caught.value)


def test_mysql_connector_names_its_package_not_its_module() -> None:
    db = DatabaseSessionManager("mysql+mysqlconnector://app@db/app")  # mysql-connector absent
    with pytest.raises(MissingDriverError, match="pip install mysql-connector-python"):
        _ = db.engine


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool_size": "5"}, r"engine_options\['pool_size'\] must be int"),
        ({"pool_pre_ping": "yes"}, r"must be bool"),
        ({"max_overflow": True}, r"must be int, not bool"),
        (["pool_size", 5], "must be a dict"),
        ({"no_such_option": 1}, "Invalid engine options"),
    ],
)
def test_options_of_the_wrong_type_fail_with_the_option_named(
    options: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        db = DatabaseSessionManager("sqlite:///./x.db", engine_options=options)  # type: ignore[arg-type]
        _ = db.engine


def test_bad_commit_policy_lists_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="'commit', 'manual', 'read_only'"):
        DatabaseSessionManager("sqlite://", commit_policy="sometimes")  # type: ignore[arg-type]
    db = DatabaseSessionManager("sqlite://")
    with pytest.raises(ConfigurationError, match="not a commit policy"):
        db.commit_policy("never")  # type: ignore[arg-type]


def test_bad_session_class() -> None:
    with pytest.raises(ConfigurationError, match="session_class"):
        DatabaseSessionManager("sqlite://", session_class=dict)  # type: ignore[arg-type]


def test_every_error_derives_from_the_root() -> None:
    for error in (ConfigurationError, MissingDriverError, DatabaseUnavailableError):
        assert issubclass(error, DBSessionError)


def test_sqlite_defaults(tmp_path: Path) -> None:
    db = DatabaseSessionManager(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(db.engine.pool, QueuePool)
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()

    assert isinstance(db.async_engine.pool, AsyncAdaptedQueuePool)  # on every SQLAlchemy 2.x

    memory = DatabaseSessionManager("sqlite://")
    assert isinstance(memory.engine.pool, StaticPool)
    assert isinstance(memory.async_engine.pool, StaticPool)
    memory.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",  # an empty file name: pysqlite opens ":memory:"
        "sqlite:///:memory:",
        "sqlite:///file:shared_mem?mode=memory&uri=true",
    ],
)
def test_every_in_memory_sqlite_spelling_is_one_database_for_every_thread(url: str) -> None:
    """Sync endpoints run in a thread pool: each thread must see the same in-memory data."""
    db = DatabaseSessionManager(url)
    with db.transaction() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
        session.execute(text("INSERT INTO t VALUES (1)"))
    seen: list[object] = []

    def count() -> None:
        with db.transaction() as session:
            seen.append(session.scalar(text("SELECT count(*) FROM t")))

    thread = threading.Thread(target=count)
    thread.start()
    thread.join()
    db.dispose()
    assert seen == [1]
    assert isinstance(db.async_engine.pool, StaticPool)


@pytest.mark.parametrize("url", ["sqlite:///{dir}/app.db", "sqlite:///file:{dir}/app.db?uri=true"])
def test_a_sqlite_file_is_no_in_memory_database(url: str, tmp_path: Path) -> None:
    db = DatabaseSessionManager(url.format(dir=tmp_path))
    assert isinstance(db.engine.pool, QueuePool)
    with db.transaction() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    db.dispose()
    assert (tmp_path / "app.db").exists()


def test_engine_options_reach_the_pool() -> None:
    """(The pre-ping default is proven by killing connections: tests/test_stale_connections.py.)"""
    overridden = DatabaseSessionManager(
        "postgresql+psycopg://app@db/app",
        engine_options={"pool_pre_ping": False, "pool_size": 2, "max_overflow": 0},
    )
    assert overridden.engine.pool.size() == 2  # type: ignore[attr-defined]


def test_sqlite_memory_pool_can_be_overridden() -> None:
    db = DatabaseSessionManager("sqlite://", engine_options={"poolclass": QueuePool})
    assert isinstance(db.engine.pool, QueuePool)


def _committed_item(db: DatabaseSessionManager, *, is_async: bool) -> Item:
    """An Item committed by a unit of work, as the code after the unit sees it."""
    import asyncio
    import uuid

    name = f"ada-{uuid.uuid4().hex[:8]}"
    if not is_async:
        with db.transaction() as session:
            item = Item(name=name)
            session.add(item)
        return item

    async def commit() -> Item:
        async with db.async_transaction() as session:
            item = Item(name=name)
            session.add(item)
            await session.flush()
        await db.async_dispose()
        return item

    return asyncio.run(commit())


def test_async_sessions_do_not_expire_on_commit_unless_asked(backend: Backend) -> None:
    """After an async commit the object stays readable (no MissingGreenlet); sync sessions
    keep SQLAlchemy's default and expire it; async_session_options can ask for expiry."""
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    assert not sa_inspect(_committed_item(db, is_async=True)).expired_attributes
    assert _committed_item(db, is_async=True).name.startswith("ada")
    assert "name" in sa_inspect(_committed_item(db, is_async=False)).expired_attributes
    asked = DatabaseSessionManager(
        backend.url, async_url=backend.async_url, async_session_options={"expire_on_commit": True}
    )
    assert "name" in sa_inspect(_committed_item(asked, is_async=True)).expired_attributes
    db.dispose()
    asked.dispose()


def _created_engines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split()[1] for r in caplog.records if "created" in r.getMessage()]


def test_engines_are_created_once_and_lazily(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbsession")
    db = DatabaseSessionManager("sqlite://")
    assert _created_engines(caplog) == []
    assert db.engine is db.engine
    assert _created_engines(caplog) == ["sync"]  # the sync side never touched the async driver
    assert db.async_engine is db.async_engine
    assert _created_engines(caplog) == ["sync", "async"]


def test_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbsession")
    db = DatabaseSessionManager(f"postgresql+psycopg://app:{SENTINEL}@127.0.0.1:1/app")
    texts = [repr(db), str(db)]
    _ = db.engine
    with pytest.raises(DatabaseUnavailableError) as caught:
        _run_lifespan(db)
    texts.append(str(caught.value))
    texts.append(str(caught.value.__cause__))
    texts.extend(record.getMessage() for record in caplog.records)

    assert any("***" in shown for shown in texts)
    for shown in texts:
        assert SENTINEL not in shown


def _run_lifespan(db: DatabaseSessionManager) -> None:
    with TestClient(FastAPI(lifespan=db.lifespan)):
        pass


def test_lifespan_startup_check_names_the_masked_url() -> None:
    db = DatabaseSessionManager(f"postgresql+psycopg://app:{SENTINEL}@127.0.0.1:1/app")
    with pytest.raises(DatabaseUnavailableError, match=r"Cannot reach the database at") as caught:
        _run_lifespan(db)
    assert "app:***@127.0.0.1:1/app" in str(caught.value)


def test_lifespan_checks_async_url_and_disposes_engines(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbsession")
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    with TestClient(FastAPI(lifespan=db.lifespan)):
        assert _created_engines(caplog) == ["sync", "async"]  # both checked at startup
        engine = db.engine
        assert engine.pool.checkedin() == 1  # the startup check's connection, back in the pool
    disposed = [r.getMessage().split()[1] for r in caplog.records if "disposed" in r.getMessage()]
    assert sorted(disposed) == ["async", "sync"]
    assert engine.pool.checkedin() == 0  # closed at shutdown...
    assert db.engine is not engine  # ...and a new engine on next use


def test_lifespan_does_not_check_a_derived_twin(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbsession")
    db = DatabaseSessionManager(backend.url)
    with TestClient(FastAPI(lifespan=db.lifespan)):
        assert _created_engines(caplog) == ["sync"]


def test_lifespan_composes_with_the_apps_own(backend: Backend) -> None:
    from contextlib import asynccontextmanager

    db = DatabaseSessionManager(backend.url)
    seen: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with db.lifespan(app):
            seen.append("started")
            yield
        seen.append("stopped")

    with TestClient(FastAPI(lifespan=lifespan)):
        assert seen == ["started"]
    assert seen == ["started", "stopped"]


def test_from_env_reads_url_and_pool_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app@db/app")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "0")
    monkeypatch.setenv("DATABASE_POOL_PRE_PING", "false")
    monkeypatch.setenv("DATABASE_COMMIT_POLICY", "manual")

    db = DatabaseSessionManager.from_env()

    assert str(db.url) == "postgresql+psycopg://app@db/app"
    assert db.engine.pool.size() == 7  # type: ignore[attr-defined]
    assert db.default_commit_policy == "manual"


def test_from_env_with_prefix_and_async_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_ASYNC_URL", "postgresql+asyncpg://app@db/app")
    db = DatabaseSessionManager.from_env(prefix="APP_DB_")
    assert str(db.async_url) == "postgresql+asyncpg://app@db/app"


def test_from_env_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_ASYNC_URL", raising=False)
    with pytest.raises(ConfigurationError, match="found neither DATABASE_URL"):
        DatabaseSessionManager.from_env()
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "ten")
    with pytest.raises(ConfigurationError, match="DATABASE_POOL_SIZE='ten'"):
        DatabaseSessionManager.from_env()


def test_import_needs_no_async_extra_and_async_use_names_it() -> None:
    """Without greenlet, the package imports and the sync side works; async names the extra."""
    script = """
import sys
import threading
sys.modules["greenlet"] = None  # as if not installed
import fastapi_dbsession
assert "sqlalchemy.ext.asyncio" not in sys.modules
db = fastapi_dbsession.DatabaseSessionManager("sqlite://")
with db.transaction() as session:
    assert session.execute(fastapi_dbsession_text("SELECT 1")).scalar() == 1
try:
    db.async_engine
except fastapi_dbsession.MissingDriverError as exc:
    print(exc)
"""
    script = "from sqlalchemy import text as fastapi_dbsession_text\n" + script
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert 'pip install "fastapi-dbsession[asyncio]"' in result.stdout


def test_dispose_recreates_the_engine_on_next_use() -> None:
    db = DatabaseSessionManager("sqlite://")
    first = db.engine
    db.dispose()
    assert db.engine is not first
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
