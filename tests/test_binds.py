"""Binds: models routed to databases by bind key, in one session over several databases.

Notes live in the manager's own database (PostgreSQL), invoices and the Core ``ledger`` table
in the ``billing`` bind (MariaDB). Rows are checked through fresh connections to each server.
"""

# No "from __future__ import annotations": FastAPI reads the routes' local Annotated aliases.
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager
from fastapi_dbsession.testing import isolated

SENTINEL = "Bind-Sentinel-Pw-7731"


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "bind_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50))


class Invoice(Base):
    __tablename__ = "bind_invoices"
    __bind_key__ = "billing"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]


class Archived(Base):
    __tablename__ = "bind_archived"
    __bind_key__ = "archive"  # no such bind below
    id: Mapped[int] = mapped_column(primary_key=True)


billing_metadata = MetaData(info={"bind_key": "billing"})
ledger = Table("bind_ledger", billing_metadata, Column("id", Integer, primary_key=True))


@pytest.fixture
def servers(postgres_database: URL, mariadb_database: URL) -> Iterator[tuple[URL, URL]]:
    """The manager's database (PostgreSQL) and the billing bind (MariaDB), with their tables."""
    created = [(postgres_database, [Note.__table__]), (mariadb_database, [Invoice.__table__])]
    for url, tables in created:
        engine = create_engine(url, poolclass=NullPool)
        Base.metadata.create_all(engine, tables=tables)
        if url is mariadb_database:
            billing_metadata.create_all(engine)
        engine.dispose()
    try:
        yield postgres_database, mariadb_database
    finally:
        for url, tables in created:
            engine = create_engine(url, poolclass=NullPool)
            Base.metadata.drop_all(engine, tables=tables)
            billing_metadata.drop_all(engine)
            engine.dispose()


def count(url: URL, table: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def make_app(db: DatabaseSessionManager) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    SessionDep = Annotated[Session, Depends(db.session)]
    AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]

    @app.post("/sync/{then}")
    def sync_write(then: str, session: SessionDep) -> int:
        session.add_all([Note(body="n"), Invoice(amount=5)])
        session.flush()
        session.execute(insert(ledger).values(id=1))
        if then == "archive":
            session.add(Archived())
            session.flush()
        if then == "fail":
            raise RuntimeError("after both writes")
        return len(session.scalars(select(Invoice)).all())  # read back from the bind

    @app.post("/async/{then}")
    async def async_write(then: str, session: AsyncSessionDep) -> int:
        session.add_all([Note(body="n"), Invoice(amount=5)])
        await session.flush()
        await session.execute(insert(ledger).values(id=1))
        if then == "archive":
            session.add(Archived())
            await session.flush()
        if then == "fail":
            raise RuntimeError("after both writes")
        return len((await session.scalars(select(Invoice))).all())

    return app


def manager(servers: tuple[URL, URL]) -> DatabaseSessionManager:
    default, billing = servers
    spare = f"postgresql+psycopg://app:{SENTINEL}@127.0.0.1:1/spare"  # never connected to
    return DatabaseSessionManager(default, binds={"billing": billing, "spare": spare})


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_each_model_is_written_to_its_bind_in_one_request(
    servers: tuple[URL, URL], side: str
) -> None:
    db = manager(servers)
    with TestClient(make_app(db)) as client:
        response = client.post(f"/{side}/commit")
        assert response.status_code == 200
        assert response.json() == 1
        pools = [db.async_engine.pool if side == "async" else db.engine.pool]
        assert [pool.checkedout() for pool in pools] == [0]  # type: ignore[attr-defined]
    default, billing = servers
    assert count(default, "bind_notes") == 1
    assert count(billing, "bind_invoices") == 1
    assert count(billing, "bind_ledger") == 1  # a Core table, keyed by its MetaData's info


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_an_error_rolls_back_every_bind(servers: tuple[URL, URL], side: str) -> None:
    db = manager(servers)
    with TestClient(make_app(db), raise_server_exceptions=False) as client:
        assert client.post(f"/{side}/fail").status_code == 500
    default, billing = servers
    assert (count(default, "bind_notes"), count(billing, "bind_invoices")) == (0, 0)
    assert count(billing, "bind_ledger") == 0


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_an_unknown_bind_key_names_the_model_and_the_binds(
    servers: tuple[URL, URL], side: str
) -> None:
    db = manager(servers)
    with TestClient(make_app(db)) as client, pytest.raises(ConfigurationError) as caught:
        client.post(f"/{side}/archive")
    message = str(caught.value)
    assert "Archived has bind key 'archive'" in message
    assert "'billing', 'spare'" in message
    assert SENTINEL not in message
    assert SENTINEL not in repr(db)
    assert "binds={'billing': " in repr(db)
    default, billing = servers
    assert (count(default, "bind_notes"), count(billing, "bind_invoices")) == (0, 0)


def test_binds_must_map_keys_to_urls() -> None:
    with pytest.raises(ConfigurationError, match="binds must be a mapping"):
        DatabaseSessionManager("sqlite://", binds=["sqlite://"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        DatabaseSessionManager("sqlite://", binds={"": "sqlite://"})
    with pytest.raises(ConfigurationError, match=r"binds\['billing'\]") as caught:
        DatabaseSessionManager("sqlite://", binds={"billing": f"nosuch://u:{SENTINEL}@h/db"})
    assert SENTINEL not in str(caught.value)
    with pytest.raises(ConfigurationError, match="twophase=True needs PostgreSQL"):
        DatabaseSessionManager(
            "postgresql+psycopg://app@db/app", binds={"b": "sqlite:///b.db"}, twophase=True
        )


def test_isolation_refuses_bound_models_instead_of_writing_them_elsewhere(
    tmp_path: Path, side: str
) -> None:
    """isolated() covers the manager's own database: a bound model's statement is refused."""
    db = DatabaseSessionManager(
        f"sqlite:///{tmp_path / 'app.db'}", binds={"billing": f"sqlite:///{tmp_path / 'b.db'}"}
    )
    Base.metadata.create_all(db.engine, tables=[Note.__table__])

    async def write_async(model: Base) -> None:
        async with db.async_transaction() as session:
            session.add(model)

    def write(model: Base) -> None:
        if side == "async":
            asyncio.run(write_async(model))
            return
        with db.transaction() as session:
            session.add(model)

    with isolated(db):
        write(Note(body="kept in the outer transaction"))
        with pytest.raises(ConfigurationError, match="wraps only the manager's own database"):
            write(Invoice(amount=1))
    assert count(make_url(f"sqlite:///{tmp_path / 'app.db'}"), "bind_notes") == 0
    db.dispose()
