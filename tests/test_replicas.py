"""Read replicas on a real primary + hot standby (tests/topology.py): routing, read-your-writes.

Every test reads ``pg_is_in_recovery()`` through the session under test: ``True`` means the
statement ran on the standby, ``False`` on the primary. Sync and async routes for each promise.
"""

# No "from __future__ import annotations": FastAPI reads the routes' local Annotated aliases.

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import URL, func, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager, StickyWindow
from tests.clusters import Cluster, free_port

pytestmark = pytest.mark.topology

IN_RECOVERY = text("SELECT pg_is_in_recovery()")
FOR_UPDATE = select(func.pg_is_in_recovery()).select_from(table("notes")).with_for_update()
TEXT_FOR_UPDATE = text("SELECT pg_is_in_recovery() FROM notes FOR UPDATE")


@dataclass(frozen=True)
class Pair:
    """One test database on the primary and the same database seen on the standby."""

    primary: Cluster
    standby: Cluster
    name: str

    def url(self, driver: str = "psycopg") -> URL:
        return self.primary.url(driver, database=self.name)

    def replica_url(self, driver: str = "psycopg", **query: str) -> URL:
        return self.standby.url(driver, database=self.name, **query)


@pytest.fixture
def pair(pg_primary: Cluster, pg_standby: Cluster) -> Iterator[Pair]:
    name = f"replicas_{uuid.uuid4().hex[:10]}"
    pg_primary.create_database(name)
    pg_primary.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)", database=name)
    pg_standby.wait_replayed()
    try:
        yield Pair(pg_primary, pg_standby, name)
    finally:
        pg_primary.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def make_manager(pair: Pair, **options: Any) -> DatabaseSessionManager:
    options.setdefault("replica_urls", [pair.replica_url()])
    return DatabaseSessionManager(pair.url(), async_url=pair.url("asyncpg"), **options)


def make_app(db: DatabaseSessionManager) -> FastAPI:
    """The same routes on both sides: ``/sync/...`` and ``/async/...``."""
    app = FastAPI(lifespan=db.lifespan)  # disposes both sides' engines, replicas included
    SessionDep = Annotated[Session, Depends(db.session)]
    ReadDep = Annotated[Session, Depends(db.read_session)]
    AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]
    AsyncReadDep = Annotated[AsyncSession, Depends(db.async_read_session)]
    read_only_route = [Depends(db.commit_policy("read_only"))]

    @app.get("/sync/read")
    def sync_read(session: ReadDep) -> bool:
        return bool(session.scalar(IN_RECOVERY))

    @app.get("/async/read")
    async def async_read(session: AsyncReadDep) -> bool:
        return bool(await session.scalar(IN_RECOVERY))

    @app.get("/sync/plain")
    def sync_plain(session: SessionDep) -> bool:
        return bool(session.scalar(IN_RECOVERY))

    @app.get("/async/plain")
    async def async_plain(session: AsyncSessionDep) -> bool:
        return bool(await session.scalar(IN_RECOVERY))

    @app.get("/sync/policy", dependencies=read_only_route)
    def sync_policy(session: SessionDep) -> bool:
        return bool(session.scalar(IN_RECOVERY))

    @app.get("/async/policy", dependencies=read_only_route)
    async def async_policy(session: AsyncSessionDep) -> bool:
        return bool(await session.scalar(IN_RECOVERY))

    @app.get("/sync/unit")
    def sync_unit() -> bool:
        with db.transaction(read_only=True) as session:
            return bool(session.scalar(IN_RECOVERY))

    @app.get("/async/unit")
    async def async_unit() -> bool:
        async with db.async_transaction(read_only=True) as session:
            return bool(await session.scalar(IN_RECOVERY))

    @app.get("/sync/for-update")
    def sync_for_update(session: ReadDep) -> list[bool]:
        return [bool(session.scalar(FOR_UPDATE)), bool(session.scalar(IN_RECOVERY))]

    @app.get("/async/for-update")
    async def async_for_update(session: AsyncReadDep) -> list[bool]:
        return [bool(await session.scalar(FOR_UPDATE)), bool(await session.scalar(IN_RECOVERY))]

    @app.post("/sync/notes")
    def sync_write(session: SessionDep, reader: ReadDep) -> dict[str, object]:
        before = bool(reader.scalar(IN_RECOVERY))
        session.execute(text("INSERT INTO notes (body) VALUES ('x') RETURNING id"))
        with db.transaction(read_only=True, propagation=_new()) as unit:
            in_unit = bool(unit.scalar(IN_RECOVERY))
        return {"before": before, "reader": bool(reader.scalar(IN_RECOVERY)), "unit": in_unit}

    @app.post("/async/notes")
    async def async_write(session: AsyncSessionDep, reader: AsyncReadDep) -> dict[str, object]:
        before = bool(await reader.scalar(IN_RECOVERY))
        await session.execute(text("INSERT INTO notes (body) VALUES ('x') RETURNING id"))
        async with db.async_transaction(read_only=True, propagation=_new()) as unit:
            in_unit = bool(await unit.scalar(IN_RECOVERY))
        reader_after = bool(await reader.scalar(IN_RECOVERY))
        return {"before": before, "reader": reader_after, "unit": in_unit}

    @app.post("/sync/raw")
    def sync_raw(reader: ReadDep) -> list[bool]:
        first = bool(reader.scalar(IN_RECOVERY))
        locked = bool(reader.scalar(TEXT_FOR_UPDATE))
        reader.execute(text("INSERT INTO notes (body) VALUES ('ro')"))
        return [first, locked, bool(reader.scalar(IN_RECOVERY))]

    @app.post("/async/raw")
    async def async_raw(reader: AsyncReadDep) -> list[bool]:
        first = bool(await reader.scalar(IN_RECOVERY))
        locked = bool(await reader.scalar(TEXT_FOR_UPDATE))
        await reader.execute(text("INSERT INTO notes (body) VALUES ('ro')"))
        return [first, locked, bool(await reader.scalar(IN_RECOVERY))]

    return app


def _new() -> Any:
    from fastapi_dbsession import Propagation

    return Propagation.REQUIRES_NEW


@pytest.fixture(params=["sync", "async"])
def side(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(pair: Pair) -> Iterator[DatabaseSessionManager]:
    manager = make_manager(pair)
    yield manager
    manager.dispose()


def test_read_only_work_reads_from_the_replica(db: DatabaseSessionManager, side: str) -> None:
    with TestClient(make_app(db)) as client:
        assert client.get(f"/{side}/read").json() is True  # db.read_session
        assert client.get(f"/{side}/policy").json() is True  # commit_policy="read_only"
        assert client.get(f"/{side}/unit").json() is True  # read_only=True unit
        assert client.get(f"/{side}/plain").json() is False  # db.session: the primary


def test_select_for_update_goes_to_the_primary_and_stays(
    db: DatabaseSessionManager, side: str
) -> None:
    with TestClient(make_app(db)) as client:
        assert client.get(f"/{side}/for-update").json() == [False, False]


def test_after_a_write_the_request_reads_from_the_primary(
    db: DatabaseSessionManager, pair: Pair, side: str
) -> None:
    with TestClient(make_app(db)) as client:
        response = client.post(f"/{side}/notes")
    assert response.status_code == 200
    assert response.json() == {"before": True, "reader": False, "unit": False}
    assert pair.primary.execute("SELECT count(*) FROM notes", database=pair.name) == [(1,)]
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_raw_sql_that_locks_or_writes_goes_to_the_primary_and_is_never_committed(
    db: DatabaseSessionManager, pair: Pair, side: str
) -> None:
    pair.primary.execute("INSERT INTO notes (body) VALUES ('row')", database=pair.name)
    pair.standby.wait_replayed(pair.primary.current_lsn())
    with TestClient(make_app(db)) as client:
        assert client.post(f"/{side}/raw").json() == [True, False, False]
    # a read session never commits: the INSERT it sent to the primary was rolled back
    assert pair.primary.execute("SELECT count(*) FROM notes", database=pair.name) == [(1,)]


def test_round_robin_over_the_replicas(pair: Pair, side: str) -> None:
    replicas = [pair.replica_url(application_name=name) for name in ("r_one", "r_two")]
    db = make_manager(pair, replica_urls=replicas)
    app = make_app(db)

    @app.get("/sync/name")
    def sync_name(session: Annotated[Session, Depends(db.read_session)]) -> str:
        return str(session.scalar(text("SELECT current_setting('application_name')")))

    @app.get("/async/name")
    async def async_name(session: Annotated[AsyncSession, Depends(db.async_read_session)]) -> str:
        return str(await session.scalar(text("SELECT current_setting('application_name')")))

    try:
        with TestClient(app) as client:
            names = [client.get(f"/{side}/name").json() for _ in range(4)]
    finally:
        db.dispose()
    assert sorted(names) == ["r_one", "r_one", "r_two", "r_two"]
    assert names[0] != names[1]


def test_a_down_replica_is_skipped_logged_and_retried_after_a_back_off(
    pair: Pair, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = URL.create(
        "postgresql+psycopg",
        username="postgres",
        host="127.0.0.1",
        port=free_port(),
        database=pair.name,
    )
    db = make_manager(pair, replica_urls=[dead, pair.replica_url()])
    caplog.set_level(logging.WARNING, logger="fastapi_dbsession")
    try:
        with TestClient(make_app(db)) as client:
            reads = [client.get(f"/{side}/read").json() for _ in range(4)]
            down_lines = [r for r in caplog.records if "is down" in r.getMessage()]
            assert reads == [True] * 4  # the standby served every read
            assert len(down_lines) == 1  # tried once, then skipped during its back-off
            assert "skipped for 1s" in down_lines[0].getMessage()
            time.sleep(1.1)
            assert client.get(f"/{side}/read").json() is True
            assert client.get(f"/{side}/read").json() is True
    finally:
        db.dispose()
    down_lines = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert len(down_lines) == 2  # retried after the back-off, which doubled
    assert "skipped for 2s" in down_lines[1]


def test_all_replicas_down_reads_from_the_primary(
    pair: Pair, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=free_port())
    db = make_manager(pair, replica_urls=[dead])
    caplog.set_level(logging.WARNING, logger="fastapi_dbsession")
    try:
        with TestClient(make_app(db)) as client:
            assert client.get(f"/{side}/read").json() is False
            assert client.get(f"/{side}/unit").json() is False
    finally:
        db.dispose()
    assert any("no read replica answers" in r.getMessage() for r in caplog.records)


def test_sticky_window_keeps_the_clients_next_requests_on_the_primary(
    pair: Pair, side: str
) -> None:
    db = make_manager(pair, sticky_window=StickyWindow(1.0, cookie="db_wrote"))
    try:
        with TestClient(make_app(db)) as client:
            assert client.get(f"/{side}/read").json() is True
            response = client.post(f"/{side}/notes")
            assert "db_wrote" in response.cookies
            assert client.get(f"/{side}/read").json() is False  # inside the window
            again = client.post(f"/{side}/notes")  # a write inside the window extends it
            assert float(again.cookies["db_wrote"]) > float(response.cookies["db_wrote"])
            time.sleep(1.1)
            assert client.get(f"/{side}/read").json() is True  # the window has closed
    finally:
        db.dispose()


def test_sticky_window_by_header(pair: Pair, side: str) -> None:
    db = make_manager(pair, sticky_window=StickyWindow(5.0, header="X-DB-Wrote"))
    try:
        with TestClient(make_app(db)) as client:
            until = client.post(f"/{side}/notes").headers["X-DB-Wrote"]
            assert float(until) > time.time()
            assert client.get(f"/{side}/read", headers={"X-DB-Wrote": until}).json() is False
            assert client.get(f"/{side}/read").json() is True
            forged = {"X-DB-Wrote": str(time.time() + 3600)}  # beyond the window: ignored
            assert client.get(f"/{side}/read", headers=forged).json() is True
    finally:
        db.dispose()


def test_read_your_writes_routing_misses_no_write(pair: Pair, side: str) -> None:
    """A write then, at once, a read-only request: with the sticky window it sees the row.

    (benchmarks/replica_lag.py measures the misses of raw reads on the standby.)
    """
    db = make_manager(pair, sticky_window=StickyWindow(2.0, cookie="db_wrote"))
    app = make_app(db)

    @app.post("/sync/add")
    def sync_add(session: Annotated[Session, Depends(db.session)]) -> int:
        return int(session.scalar(text("INSERT INTO notes (body) VALUES ('n') RETURNING id")))

    @app.post("/async/add")
    async def async_add(session: Annotated[AsyncSession, Depends(db.async_session)]) -> int:
        result = await session.scalar(text("INSERT INTO notes (body) VALUES ('n') RETURNING id"))
        return int(result)

    @app.get("/sync/seen/{note_id}")
    def sync_seen(note_id: int, session: Annotated[Session, Depends(db.read_session)]) -> bool:
        found = session.scalar(text("SELECT count(*) FROM notes WHERE id = :i"), {"i": note_id})
        return bool(found)

    @app.get("/async/seen/{note_id}")
    async def async_seen(
        note_id: int, session: Annotated[AsyncSession, Depends(db.async_read_session)]
    ) -> bool:
        query = text("SELECT count(*) FROM notes WHERE id = :i")
        return bool(await session.scalar(query, {"i": note_id}))

    try:
        with TestClient(app) as client:
            misses = 0
            for _ in range(50):
                note_id = client.post(f"/{side}/add").json()
                misses += not client.get(f"/{side}/seen/{note_id}").json()
    finally:
        db.dispose()
    assert misses == 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"replica_urls": "postgresql://replica/app"}, "replica_urls must be a list"),
        ({"replica_urls": ["not a url"]}, r"replica_urls\[0\]"),
        ({"sticky_window": StickyWindow(2.0, cookie="c")}, "has no replica_urls"),
    ],
)
def test_bad_replica_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        DatabaseSessionManager("postgresql+psycopg://app@primary/app", **options)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [((0,), "positive number"), ((2.0,), "exactly one"), ((2.0, "c", "h"), "exactly one")],
)
def test_bad_sticky_window_is_refused(arguments: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        StickyWindow(*arguments)
