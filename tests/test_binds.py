"""Binds: models routed to databases by bind key, in one session over several databases.

Notes live in the manager's own database (PostgreSQL), invoices and the Core ``ledger`` table
in the ``billing`` bind (MariaDB). Rows are checked through fresh connections to each server.
"""

# No "from __future__ import annotations": FastAPI reads the routes' local Annotated aliases.
import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import TextClause

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager, PartialCommitError
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


# -- commit order without two-phase commit -------------------------------------------------

BAD_CHILD = text("INSERT INTO bind_child (parent_id) VALUES (42)")  # no parent 42: fails at COMMIT
audit = Table("bind_audit", MetaData(info={"bind_key": "audit"}), Column("id", Integer))


def create_deferred_child(url: URL) -> None:
    """A PostgreSQL table whose foreign key is checked at COMMIT: the insert works, COMMIT fails."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bind_child, bind_parent"))
        connection.execute(text("CREATE TABLE bind_parent (id int PRIMARY KEY)"))
        connection.execute(text("INSERT INTO bind_parent VALUES (1)"))
        connection.execute(
            text(
                "CREATE TABLE bind_child (id serial PRIMARY KEY, parent_id int REFERENCES "
                "bind_parent DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    engine.dispose()


def drop_deferred_child(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bind_child, bind_parent"))
    engine.dispose()


def idle_in_transaction(postgres: URL) -> int:
    """Connections to ``postgres``'s database left inside a transaction (not rolled back)."""
    engine = create_engine(postgres, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                        "AND state LIKE 'idle in transaction%'"
                    ),
                    {"db": postgres.database},
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.fixture
def mariadb_first(postgres_database: URL, mariadb_database: URL) -> Iterator[tuple[URL, URL]]:
    """MariaDB as the manager's database (notes, audit), PostgreSQL as the billing bind."""
    engine = create_engine(mariadb_database, poolclass=NullPool)
    Base.metadata.create_all(engine, tables=[Note.__table__])
    audit.create(engine)
    engine.dispose()
    create_deferred_child(postgres_database)
    try:
        yield mariadb_database, postgres_database
    finally:
        engine = create_engine(mariadb_database, poolclass=NullPool)
        Base.metadata.drop_all(engine, tables=[Note.__table__])
        audit.drop(engine)
        engine.dispose()
        drop_deferred_child(postgres_database)


def make_failing_app(db: DatabaseSessionManager) -> FastAPI:
    """Each route writes a note (own database), a child the billing bind's COMMIT refuses
    (or a good one) and an audit row (the audit bind, declared after billing)."""
    app = FastAPI(lifespan=db.lifespan)
    on_billing = {"mapper": Invoice.__mapper__}  # raw SQL sent to the billing bind

    def child(good: bool) -> TextClause:
        return text("INSERT INTO bind_child (parent_id) VALUES (1)") if good else BAD_CHILD

    @app.post("/sync/{how}")
    def sync_write(how: str, session: Annotated[Session, Depends(db.session)]) -> str:
        session.add(Note(body="n"))
        session.execute(child(how == "good"), bind_arguments=on_billing)
        session.execute(insert(audit).values(id=1))
        return "ok"

    @app.post("/async/{how}")
    async def async_write(
        how: str, session: Annotated[AsyncSession, Depends(db.async_session)]
    ) -> str:
        session.add(Note(body="n"))
        await session.execute(child(how == "good"), bind_arguments=on_billing)
        await session.execute(insert(audit).values(id=1))
        return "ok"

    return app


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_a_bind_failing_after_the_own_database_committed_is_a_partial_commit_error(
    mariadb_first: tuple[URL, URL], side: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The own database (MariaDB) commits first; the billing bind's COMMIT then fails; the
    audit bind, declared after it, is rolled back."""
    own, billing = mariadb_first
    bind = billing.set(drivername="postgresql+asyncpg") if side == "async" else billing
    db = DatabaseSessionManager(own, binds={"billing": bind, "audit": own})  # async: asyncpg
    with (
        caplog.at_level(logging.ERROR, logger="fastapi_dbsession"),
        TestClient(make_failing_app(db)) as client,
        pytest.raises(PartialCommitError) as caught,
    ):
        client.post(f"/{side}/bad")
    assert caught.value.committed == (db.name,)
    assert caught.value.failed == "billing"
    message = str(caught.value)
    assert (
        f"the own database {db.name!r} committed, then the commit on bind 'billing' failed"
        in message
    )
    assert "(IntegrityError" in message
    assert "bind 'audit' rolled back" in message
    assert any(r.levelno == logging.ERROR and "partial commit" in r.message for r in caplog.records)
    assert (count(own, "bind_notes"), count(billing, "bind_child"), count(own, "bind_audit")) == (
        1,
        0,
        0,
    )
    with TestClient(make_failing_app(db), raise_server_exceptions=False) as client:
        assert client.post(f"/{side}/bad").status_code == 500  # never a 2xx
        pool = db.async_engine.pool if side == "async" else db.engine.pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert idle_in_transaction(billing) == 0  # the failed bind's connection rolled back
        assert client.post(f"/{side}/good").status_code == 200  # the session is usable again
    assert (count(own, "bind_notes"), count(billing, "bind_child"), count(own, "bind_audit")) == (
        3,
        1,
        1,
    )


@pytest.fixture
def postgres_first(servers: tuple[URL, URL]) -> Iterator[tuple[URL, URL]]:
    """PostgreSQL as the manager's database, with the deferred child; MariaDB as billing."""
    create_deferred_child(servers[0])
    try:
        yield servers
    finally:
        drop_deferred_child(servers[0])


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_the_own_database_commits_first_so_its_failure_commits_no_bind(
    postgres_first: tuple[URL, URL], side: str
) -> None:
    """SQLAlchemy alone commits a session's connections in no set order: MariaDB's invoice
    could be committed before PostgreSQL's COMMIT failed. The own database goes first."""
    own, billing = postgres_first
    db = DatabaseSessionManager(own, binds={"billing": billing})
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/sync")
    def sync_write(session: Annotated[Session, Depends(db.session)]) -> None:
        session.add_all([Invoice(amount=5), Note(body="n")])
        session.flush()
        session.execute(BAD_CHILD)

    @app.post("/async")
    async def async_write(session: Annotated[AsyncSession, Depends(db.async_session)]) -> None:
        session.add_all([Invoice(amount=5), Note(body="n")])
        await session.flush()
        await session.execute(BAD_CHILD)

    for _ in range(3):  # set order varies from run to run; the defined one does not
        with TestClient(app) as client, pytest.raises(IntegrityError):  # not a partial commit
            client.post(f"/{side}")
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post(f"/{side}").status_code == 500
    assert (count(own, "bind_notes"), count(billing, "bind_invoices")) == (0, 0)


# -- why twophase=True stays refused on MariaDB ---------------------------------------------


@pytest.mark.mariadb
def test_twophase_stays_refused_on_mariadb_a_deadlocked_xa_branch_cannot_roll_back(
    mariadb_database: URL,
) -> None:
    """SQLAlchemy's MySQL dialect runs XA START / END / PREPARE / COMMIT, and the happy path
    works on MariaDB; but a deadlock leaves the XA branch ROLLBACK ONLY, and the dialect's
    rollback sends ``XA END`` first, which MariaDB refuses (1399 XAER_RMFAIL): the rollback
    raises instead of rolling back. When this test fails, SQLAlchemy rolls such a branch back
    and ``check_twophase`` may let MariaDB in."""
    import threading

    from sqlalchemy.exc import OperationalError

    refusal = _refusal(mariadb_database)
    assert "twophase=True needs PostgreSQL" in refusal  # no longer refused: drop this test
    assert "1399 XAER_RMFAIL" in refusal  # the refusal gives this reason
    engine = create_engine(mariadb_database)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE xa_rows (id int PRIMARY KEY, v int)"))
        connection.execute(text("INSERT INTO xa_rows VALUES (1, 0), (2, 0)"))
    first, second = Session(engine, twophase=True), Session(engine, twophase=True)
    failed: dict[str, Session] = {}
    codes: dict[str, int] = {}
    try:
        first.execute(text("UPDATE xa_rows SET v = 1 WHERE id = 1"))
        second.execute(text("UPDATE xa_rows SET v = 2 WHERE id = 2"))

        def cross(name: str, session: Session, row: int) -> None:
            try:
                session.execute(text(f"UPDATE xa_rows SET v = 9 WHERE id = {row}"))
            except OperationalError as exc:
                codes[name] = exc.orig.args[0]  # type: ignore[union-attr]
                failed[name] = session

        waiting = threading.Thread(target=cross, args=("second", second, 1))
        waiting.start()
        cross("first", first, 2)  # one of the two is chosen as the deadlock's victim
        waiting.join(timeout=60)
        (victim,) = failed.values()
        assert list(codes.values()) == [1213]  # the deadlock
        with pytest.raises(OperationalError, match="1399.*XAER_RMFAIL"):
            victim.rollback()  # XA END refused: XA ROLLBACK is never sent
    finally:
        for session in (first, second):
            if session not in failed.values():
                session.rollback()
            session.close()  # the victim's connection is discarded: the server rolls it back
        with engine.begin() as connection:
            assert connection.execute(text("XA RECOVER")).all() == []
            connection.execute(text("DROP TABLE xa_rows"))
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        engine.dispose()


def _refusal(url: URL) -> str:
    try:
        DatabaseSessionManager(url, twophase=True)
    except ConfigurationError as exc:
        return str(exc)
    return ""


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_a_unit_of_work_and_a_manual_commit_keep_the_commit_order(
    mariadb_first: tuple[URL, URL], side: str
) -> None:
    """Not only the request's commit: db.transaction() and the app's own session.commit()."""
    own, billing = mariadb_first
    db = DatabaseSessionManager(own, binds={"billing": billing})
    on_billing = {"mapper": Invoice.__mapper__}

    def sync_unit(manual: bool) -> None:
        with db.transaction() as session:
            session.add(Note(body="n"))
            session.execute(BAD_CHILD, bind_arguments=on_billing)
            if manual:
                session.commit()

    async def async_unit(manual: bool) -> None:
        try:
            async with db.async_transaction() as session:
                session.add(Note(body="n"))
                await session.execute(BAD_CHILD, bind_arguments=on_billing)
                if manual:
                    await session.commit()
        finally:
            await db.async_dispose()  # this loop's connections, the binds' too

    for manual in (False, True):
        with pytest.raises(PartialCommitError) as caught:
            if side == "async":
                asyncio.run(async_unit(manual))
            else:
                sync_unit(manual)
        assert (caught.value.committed, caught.value.failed) == ((db.name,), "billing")
    db.dispose()
    assert (count(own, "bind_notes"), count(billing, "bind_child")) == (2, 0)


def test_without_binds_or_replicas_no_routing_runs_per_statement(tmp_path: Path) -> None:
    """Issue 14: routing left unconfigured costs nothing. A manager without ``binds`` or
    ``replica_urls`` hands out sessions that bind as SQLAlchemy's own ``Session`` does (no
    ``get_bind`` of ours runs per statement); one with ``binds`` routes, sync and async."""
    plain = DatabaseSessionManager(f"sqlite:///{tmp_path / 'plain.db'}")
    routed = DatabaseSessionManager(
        f"sqlite:///{tmp_path / 'own.db'}", binds={"billing": f"sqlite:///{tmp_path / 'b.db'}"}
    )

    async def async_get_binds() -> tuple[object, object]:
        async with plain.async_transaction() as session:
            plain_bind = type(session.sync_session).get_bind
        async with routed.async_transaction() as session:
            routed_bind = type(session.sync_session).get_bind
        await plain.async_dispose()
        await routed.async_dispose()
        return plain_bind, routed_bind

    try:
        with plain.transaction() as session:
            assert type(session).get_bind is Session.get_bind
            assert session.execute(text("SELECT 1")).scalar_one() == 1
        with routed.transaction() as session:
            assert type(session).get_bind is not Session.get_bind
        plain_async, routed_async = asyncio.run(async_get_binds())
        assert plain_async is Session.get_bind
        assert routed_async is not Session.get_bind
    finally:
        plain.dispose()
        routed.dispose()
