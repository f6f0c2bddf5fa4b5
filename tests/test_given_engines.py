"""DatabaseSessionManager(engine=..., async_engine=...): engines the app built, used as given."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, StaticPool

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager
from fastapi_dbsession.testing import (
    create_test_database,
    drop_test_database,
    isolated,
    use_database,
    use_engine,
)
from fastapi_dbsession.testing._seam import database_of
from tests.conftest import Backend, PoolWatch
from tests.holding import held, holding_app
from tests.models import Base, Item


def creator_engine(backend: Backend, **options: Any) -> Engine:
    """An engine whose connections come from a custom ``creator``, as IAM connectors do."""
    url = backend.url
    connect: Callable[[], Any]
    if backend.name == "sqlite":
        path = url.database
        assert path is not None
        connect = lambda: sqlite3.connect(path, check_same_thread=False)  # noqa: E731
        return create_engine(f"sqlite:///{path}", creator=connect, **options)
    if backend.name == "postgresql":
        import psycopg

        connect = lambda: psycopg.connect(  # noqa: E731
            host=url.host, port=url.port, user=url.username, dbname=url.database
        )
        return create_engine("postgresql+psycopg://", creator=connect, **options)
    import pymysql

    connect = lambda: pymysql.connect(  # noqa: E731
        host=url.host, port=url.port or 3306, user=url.username, database=url.database
    )
    return create_engine("mysql+pymysql://", creator=connect, **options)


def items_app(db: DatabaseSessionManager) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/items", status_code=201)
    def create(name: str, session: Session = Depends(db.session)) -> dict[str, int]:
        item = Item(name=name)
        session.add(item)
        session.flush()
        return {"id": item.id}

    @app.post("/aitems", status_code=201)
    async def acreate(name: str, session: AsyncSession = Depends(db.async_session)) -> None:
        session.add(Item(name=name))

    @app.get("/aitems")
    async def anames(session: AsyncSession = Depends(db.async_session)) -> list[str]:
        return list(await session.scalars(select(Item.name).order_by(Item.name)))

    @app.get("/items")
    def names(session: Session = Depends(db.session)) -> list[str]:
        return list(session.scalars(select(Item.name).order_by(Item.name)))

    return app


def listener_counts(engine: Engine) -> dict[str, int]:
    pool_events = {
        name: len(getattr(engine.pool.dispatch, name)) for name in ("connect", "checkout")
    }
    dialect = engine.dialect.dispatch
    return {
        **pool_events,
        "begin": len(engine.dispatch.begin),
        **{name: len(getattr(dialect, name)) for name in ("do_execute", "do_executemany")},
    }


@pytest.fixture
def engine(backend: Backend) -> Iterator[Engine]:
    engine = creator_engine(backend)
    yield engine
    engine.dispose()


def test_engine_with_custom_creator_serves_requests_and_stays_open_after_shutdown(
    engine: Engine, backend: Backend
) -> None:
    listeners = listener_counts(engine)
    pool = engine.pool
    db = DatabaseSessionManager(engine=engine)
    assert db.engine is engine

    with TestClient(items_app(db)) as client:
        assert client.post("/items", params={"name": "ada"}).status_code == 201
        assert client.get("/items").json() == ["ada"]

    assert backend.count() == 1  # really committed
    assert engine.pool is pool  # not disposed by the app's shutdown: the engine is the app's
    assert engine.pool.checkedout() == 0
    assert listener_counts(engine) == listeners  # used as given: no listener added
    with engine.connect() as connection:  # and it still works for the rest of the app
        assert connection.scalar(text("SELECT count(*) FROM items")) == 1


def test_dispose_engines_lets_the_shutdown_dispose_them(engine: Engine) -> None:
    pool = engine.pool
    db = DatabaseSessionManager(engine=engine, dispose_engines=True)
    with TestClient(items_app(db)) as client:
        assert client.post("/items", params={"name": "ada"}).status_code == 201
    assert engine.pool is not pool  # SQLAlchemy swaps in a fresh pool on dispose()


def test_explicit_dispose_disposes_a_given_engine_and_keeps_using_it(engine: Engine) -> None:
    db = DatabaseSessionManager(engine=engine)
    with db.transaction() as session:
        session.add(Item(name="ada"))
    pool = engine.pool
    db.dispose()
    assert engine.pool is not pool
    assert db.engine is engine
    with db.transaction() as session:
        assert session.scalars(select(Item.name)).all() == ["ada"]


def test_async_engine_is_used_as_given_and_not_disposed(backend: Backend) -> None:
    # NullPool: the connections close inside TestClient's loop (the test owns this engine)
    async_engine = create_async_engine(backend.async_url, poolclass=NullPool)
    pool = async_engine.sync_engine.pool
    watch = PoolWatch(async_engine)
    db = DatabaseSessionManager(async_engine=async_engine)
    assert db.async_engine is async_engine
    assert db.url is None  # no sync side is derived from an engine you built
    with TestClient(items_app(db)) as client:
        assert client.post("/aitems", params={"name": "ada"}).status_code == 201
    assert backend.count() == 1
    assert async_engine.sync_engine.pool is pool  # not disposed: still the same pool
    assert watch.checkouts >= 1
    assert watch.out == 0  # every connection back
    with pytest.raises(ConfigurationError, match="no sync URL"):
        _ = db.engine


def test_an_engine_for_one_side_and_a_url_for_the_other(engine: Engine, backend: Backend) -> None:
    db = DatabaseSessionManager(engine=engine, async_url=backend.async_url)
    with TestClient(items_app(db)) as client:
        assert client.post("/items", params={"name": "ada"}).status_code == 201
        assert client.post("/aitems", params={"name": "bob"}).status_code == 201
    assert backend.names() == ["ada", "bob"]
    assert engine.pool.checkedout() == 0


def test_capacity_gate_is_sized_from_the_given_engines_pool(backend: Backend) -> None:
    engine = creator_engine(backend, pool_size=1, max_overflow=0, pool_timeout=0.3)
    db = DatabaseSessionManager(engine=engine)
    app, holding, release = holding_app(db, sides=("sync",))
    try:
        with TestClient(app) as client:
            with held(client, "sync", holding, release):
                assert client.get("/sync").status_code == 503  # the gate held 1: the pool's size
            assert client.get("/sync").status_code == 200
    finally:
        release.set()
        engine.dispose()


def test_isolation_rolls_back_app_commits_on_a_given_engine(
    engine: Engine, backend: Backend, side: str
) -> None:
    async_engine = create_async_engine(backend.async_url, poolclass=NullPool)
    watches = PoolWatch(engine), PoolWatch(async_engine)
    db = DatabaseSessionManager(engine=engine, async_engine=async_engine)
    path = "/items" if side == "sync" else "/aitems"
    with isolated(db), TestClient(items_app(db)) as client:
        assert client.post(path, params={"name": "ada"}).status_code == 201
        assert client.post(path, params={"name": "bob"}).status_code == 201
        assert client.get(path).json() == ["ada", "bob"]  # the app sees its commits...
    assert backend.count() == 0  # ...and the database does not keep it
    assert [watch.out for watch in watches] == [0, 0]  # every connection back


def test_use_database_and_back_to_the_given_engine(
    engine: Engine, backend: Backend, tmp_path: Any
) -> None:
    db = DatabaseSessionManager(engine=engine)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    Base.metadata.create_all(create_engine(other))
    database = database_of(db)  # the plugin's dbsession_database comes back the same way
    original = database.config
    use_database(db, other)
    with db.transaction() as session:
        session.add(Item(name="elsewhere"))
    database.reconfigure(original)
    assert db.engine is engine
    assert backend.count() == 0
    with db.transaction() as session:
        session.add(Item(name="here"))
    assert backend.names() == ["here"]


def test_a_test_suite_swaps_in_its_own_engine_and_restores(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url)
    app = items_app(db)
    test_engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    Base.metadata.create_all(test_engine)

    with use_engine(db, test_engine), TestClient(app) as client:
        assert client.post("/items", params={"name": "ada"}).status_code == 201
        assert client.get("/items").json() == ["ada"]
    assert backend.count() == 0  # the app's own database saw nothing
    with test_engine.connect() as connection:  # the shutdown left the test's engine open
        assert connection.scalar(text("SELECT name FROM items")) == "ada"

    with TestClient(app) as client:  # restored: the app's database again
        assert client.post("/items", params={"name": "bob"}).status_code == 201
    assert backend.names() == ["bob"]


def test_a_swapped_in_engine_leaves_the_other_side_empty(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    test_engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    swap = use_engine(db, test_engine)
    try:
        with pytest.raises(ConfigurationError, match="no async URL"):
            _ = db.async_engine  # never the app's database by mistake
    finally:
        swap.restore()
    assert db.async_url == backend.async_url


def test_in_memory_sqlite_engine_keeps_its_data_across_app_restarts() -> None:
    engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    Base.metadata.create_all(engine)
    db = DatabaseSessionManager(engine=engine)
    app = items_app(db)
    with TestClient(app) as client:
        assert client.post("/items", params={"name": "ada"}).status_code == 201
    with TestClient(app) as client:  # a disposed StaticPool engine would have lost the table
        assert client.get("/items").json() == ["ada"]


def test_given_sqlite_engine_gets_no_pragmas() -> None:
    engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    db = DatabaseSessionManager(engine=engine)
    with db.transaction() as session:
        assert session.scalar(text("PRAGMA foreign_keys")) == 0  # SQLite's default, untouched


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": "sqlite://"}, "engine= and url= both name the sync database"),
        ({"engine_options": {"pool_size": 2}}, "engine_options cannot apply to an engine"),
        ({"dispose_engines": "yes"}, "dispose_engines must be True or False"),
    ],
)
def test_an_engine_with_conflicting_arguments_is_refused(
    arguments: dict[str, Any], message: str
) -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match=message):
        DatabaseSessionManager(engine=engine, **arguments)


def test_engines_of_the_wrong_kind_are_named() -> None:
    async_engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError, match="pass it as async_engine="):
        DatabaseSessionManager(engine=async_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pass it as engine="):
        DatabaseSessionManager(async_engine=create_engine("sqlite://"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="only applies to engines you pass"):
        DatabaseSessionManager("sqlite://", dispose_engines=True)
    with pytest.raises(ConfigurationError, match="needs an engine"):
        use_engine(DatabaseSessionManager("sqlite://"))


def test_a_test_suite_swaps_in_an_engine_on_its_own_database(backend: Backend) -> None:
    """What a user's conftest does on PostgreSQL / MariaDB: a test database, its own engine."""
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    app = items_app(db)
    test_url = create_test_database(backend.url, metadata=Base.metadata)
    test_engine = create_engine(test_url)
    test_async_engine = create_async_engine(  # TestClient's loop ends with the block: no pool
        test_url.set(drivername=backend.async_url.drivername), poolclass=NullPool
    )
    try:
        with use_engine(db, test_engine, async_engine=test_async_engine), TestClient(app) as client:
            assert client.post("/items", params={"name": "ada"}).status_code == 201
            assert client.post("/aitems", params={"name": "bob"}).status_code == 201
        with test_engine.connect() as connection:
            names = connection.scalars(text("SELECT name FROM items ORDER BY name")).all()
        assert names == ["ada", "bob"]
        assert backend.count() == 0  # the app's own database saw nothing
    finally:
        test_engine.dispose()
        asyncio.run(test_async_engine.dispose())
        drop_test_database(test_url)
