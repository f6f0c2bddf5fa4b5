"""Several managers in one request: commit order, two-phase commit, no silent half-commit.

Two databases on the harness primary (``max_prepared_transactions = 10``). Database B's
table has a deferred foreign key: an insert into it succeeds and its COMMIT (or PREPARE) fails,
which is how a commit fails for real (a constraint checked at commit, a serialization failure).
"""

# No "from __future__ import annotations": FastAPI reads the routes' local Annotated aliases.
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager, PartialCommitError
from tests.clusters import Cluster
from tests.test_binds import Invoice, Note
from tests.test_binds import make_app as make_binds_app

pytestmark = pytest.mark.topology

BAD_B = "INSERT INTO child (parent_id) VALUES (42)"  # no parent 42: fails at COMMIT / PREPARE
GOOD_B = "INSERT INTO child (parent_id) VALUES (1)"


@pytest.fixture
def databases(pg_primary: Cluster) -> Iterator[tuple[str, str]]:
    names = (f"multi_a_{uuid.uuid4().hex[:8]}", f"multi_b_{uuid.uuid4().hex[:8]}")
    for name in names:
        pg_primary.create_database(name)
    pg_primary.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)", database=names[0])
    pg_primary.execute("CREATE TABLE parent (id int PRIMARY KEY)", database=names[1])
    pg_primary.execute("INSERT INTO parent VALUES (1)", database=names[1])
    pg_primary.execute(
        "CREATE TABLE child (id serial PRIMARY KEY, parent_id int REFERENCES parent "
        "DEFERRABLE INITIALLY DEFERRED)",
        database=names[1],
    )
    try:
        yield names
    finally:
        for name in names:
            pg_primary.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def managers(
    primary: Cluster, names: tuple[str, str], **options: Any
) -> tuple[DatabaseSessionManager, DatabaseSessionManager]:
    return tuple(  # type: ignore[return-value]
        DatabaseSessionManager(
            primary.url("psycopg", database=name),
            async_url=primary.url("asyncpg", database=name),
            **options,
        )
        for name in names
    )


def make_app(db_a: DatabaseSessionManager, db_b: DatabaseSessionManager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with db_a.lifespan(app), db_b.lifespan(app):  # both disposed at shutdown
            yield

    app = FastAPI(lifespan=lifespan)
    A = Annotated[Session, Depends(db_a.session)]
    B = Annotated[Session, Depends(db_b.session)]
    AsyncA = Annotated[AsyncSession, Depends(db_a.async_session)]
    AsyncB = Annotated[AsyncSession, Depends(db_b.async_session)]

    @app.post("/sync/{b_sql}")
    def sync_both(b_sql: str, a: A, b: B) -> str:
        a.execute(text("INSERT INTO notes (body) VALUES ('a')"))
        b.execute(text(BAD_B if b_sql == "bad" else GOOD_B))
        return "ok"

    @app.post("/async/{b_sql}")
    async def async_both(b_sql: str, a: AsyncA, b: AsyncB) -> str:
        await a.execute(text("INSERT INTO notes (body) VALUES ('a')"))
        await b.execute(text(BAD_B if b_sql == "bad" else GOOD_B))
        return "ok"

    @app.post("/sync-b-first/{b_sql}")
    def sync_b_first(b_sql: str, b: B, a: A) -> str:
        return sync_both(b_sql, a, b)

    return app


def rows(primary: Cluster, names: tuple[str, str]) -> tuple[int, int]:
    (a,) = primary.execute("SELECT count(*) FROM notes", database=names[0])[0]
    (b,) = primary.execute("SELECT count(*) FROM child", database=names[1])[0]
    return a, b


@pytest.fixture(params=["sync", "async"])
def side(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_both_commit_when_both_can(pg_primary: Cluster, databases: tuple[str, str], side: str):
    db_a, db_b = managers(pg_primary, databases)
    with TestClient(make_app(db_a, db_b)) as client:
        assert client.post(f"/{side}/good").status_code == 200
    assert rows(pg_primary, databases) == (1, 1)


def test_a_commit_failing_after_another_committed_is_a_partial_commit_error(
    pg_primary: Cluster, databases: tuple[str, str], side: str
) -> None:
    db_a, db_b = managers(pg_primary, databases)
    with TestClient(make_app(db_a, db_b)) as client, pytest.raises(PartialCommitError) as caught:
        client.post(f"/{side}/bad")
    assert caught.value.committed == (databases[0],)  # A, declared first, committed first
    assert caught.value.failed == databases[1]
    assert "twophase=True" in str(caught.value)
    assert rows(pg_primary, databases) == (1, 0)
    with TestClient(make_app(db_a, db_b), raise_server_exceptions=False) as client:
        assert client.post(f"/{side}/bad").status_code == 500  # never a 2xx
        pools = [db.async_engine.pool if side == "async" else db.engine.pool for db in (db_a, db_b)]
        assert [pool.checkedout() for pool in pools] == [0, 0]  # type: ignore[attr-defined]


def test_the_first_declared_commits_first_so_its_failure_commits_nothing(
    pg_primary: Cluster, databases: tuple[str, str]
) -> None:
    """Before: B's commit (declared first) ran last and failed after A had committed (a 500,
    A's row kept). Now B commits first; its failure rolls A back."""
    db_a, db_b = managers(pg_primary, databases)
    with TestClient(make_app(db_a, db_b), raise_server_exceptions=False) as client:
        assert client.post("/sync-b-first/bad").status_code == 500
        assert client.post("/sync-b-first/good").status_code == 200
    assert rows(pg_primary, databases) == (1, 1)  # only the good request's rows


def prepared(primary: Cluster) -> list[tuple[object, ...]]:
    return primary.execute("SELECT gid FROM pg_prepared_xacts")


def test_two_phase_commit_is_all_or_nothing(
    pg_primary: Cluster, databases: tuple[str, str], side: str
) -> None:
    db_a, db_b = managers(pg_primary, databases, twophase=True)
    before = prepared(pg_primary)
    with TestClient(make_app(db_a, db_b), raise_server_exceptions=False) as client:
        assert client.post(f"/{side}/bad").status_code == 500  # B's PREPARE fails: both undone
        assert rows(pg_primary, databases) == (0, 0)
        assert client.post(f"/{side}/good").status_code == 200
        assert rows(pg_primary, databases) == (1, 1)
    assert prepared(pg_primary) == before  # nothing left prepared on the server


def test_twophase_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ConfigurationError, match="twophase=True needs PostgreSQL"):
        DatabaseSessionManager("sqlite:///x.db", twophase=True)
    with pytest.raises(ConfigurationError, match="True or False"):
        DatabaseSessionManager("postgresql+psycopg://app@db/app", twophase="yes")  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def first_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """The first-declared database on another backend, with a ``notes`` table."""
    if request.param == "sqlite":
        url, key = make_url(f"sqlite:///{tmp_path / 'a.db'}"), "INTEGER PRIMARY KEY"
    else:
        url, key = request.getfixturevalue("mariadb_database"), "INTEGER PRIMARY KEY AUTO_INCREMENT"
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE notes (id {key}, body VARCHAR(10))"))
    try:
        yield url
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE notes"))
        engine.dispose()


def test_a_partial_commit_across_backends_names_the_side_that_committed(
    pg_primary: Cluster, databases: tuple[str, str], first_url: URL, side: str
) -> None:
    """SQLite or MariaDB declared first commits; PostgreSQL's commit then fails."""
    db_a, db_b = DatabaseSessionManager(first_url), managers(pg_primary, databases)[1]
    with TestClient(make_app(db_a, db_b)) as client, pytest.raises(PartialCommitError) as caught:
        client.post(f"/{side}/bad")
    assert caught.value.committed == (db_a.name,)
    assert caught.value.failed == databases[1]
    with TestClient(make_app(db_a, db_b), raise_server_exceptions=False) as client:
        assert client.post(f"/{side}/bad").status_code == 500
    engine = create_engine(first_url, poolclass=NullPool)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM notes")).scalar_one() == 2
    engine.dispose()
    assert pg_primary.execute("SELECT count(*) FROM child", database=databases[1])[0][0] == 0


@pytest.mark.topology
def test_twophase_binds_commit_all_or_nothing(
    pg_primary: Cluster, databases: tuple[str, str], side: str
) -> None:
    """One session over two PostgreSQL databases (a bind) with twophase=True: the bind's
    PREPARE fails, so the default database's rows are not committed either."""
    pg_primary.execute("CREATE TABLE bind_notes (id serial, body text)", database=databases[0])
    for table in ("bind_invoices (id serial, amount int)", "bind_ledger (id int)"):
        pg_primary.execute(f"CREATE TABLE {table}", database=databases[1])
    db = DatabaseSessionManager(
        pg_primary.url("psycopg", database=databases[0]),
        binds={"billing": pg_primary.url("psycopg", database=databases[1])},
        twophase=True,
    )
    app = make_binds_app(db)
    on_bind = {"mapper": Invoice.__mapper__}  # raw SQL sent to the billing bind

    @app.post("/bad-prepare/sync")
    def bad_sync(session: Annotated[Session, Depends(db.session)]) -> None:
        session.add_all([Note(body="n"), Invoice(amount=5)])
        session.flush()  # both rows reach their servers before the commit
        session.execute(text(BAD_B), bind_arguments=on_bind)

    @app.post("/bad-prepare/async")
    async def bad_async(session: Annotated[AsyncSession, Depends(db.async_session)]) -> None:
        session.add_all([Note(body="n"), Invoice(amount=5)])
        await session.flush()
        await session.execute(text(BAD_B), bind_arguments=on_bind)

    def rows() -> tuple[int, int]:
        a, b = databases
        (notes,) = pg_primary.execute("SELECT count(*) FROM bind_notes", database=a)[0]
        (bills,) = pg_primary.execute("SELECT count(*) FROM bind_invoices", database=b)[0]
        return int(notes), int(bills)

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post(f"/bad-prepare/{side}").status_code == 500
        assert rows() == (0, 0)
        assert client.post(f"/{side}/commit").status_code == 200
        assert rows() == (1, 1)
    assert pg_primary.execute("SELECT count(*) FROM pg_prepared_xacts")[0][0] == 0
