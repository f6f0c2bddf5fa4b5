"""A connection lost during COMMIT raises CommitOutcomeUnknownError, never an ordinary error.

The server may have committed and lost the answer (MariaDB's ``2013 Lost connection ...
during query`` at COMMIT), or never seen the COMMIT. Either way the library cannot know: it
raises :class:`CommitOutcomeUnknownError`, logs "commit outcome unknown" at ERROR, never
re-runs the unit for ``retries=``, and the connection is discarded (the next request works).
The faults are real: a proxy drops the TCP connection around COMMIT (both outcomes, both
servers), and on PostgreSQL the backend is killed by ``pg_terminate_backend`` while COMMIT
runs a deferred trigger.
"""

from __future__ import annotations

import logging
import threading
import time

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fastapi_dbsession import CommitOutcomeUnknownError, DatabaseSessionManager
from tests.conftest import Backend, PoolWatch
from tests.models import Item
from tests.reliability.faults import CutMode, CuttingProxy

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


def _manager(backend: Backend, port: int) -> DatabaseSessionManager:
    return DatabaseSessionManager(
        backend.url.set(port=port), async_url=backend.async_url.set(port=port)
    )


def _app(db: DatabaseSessionManager, proxy: CuttingProxy) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(CommitOutcomeUnknownError)
    async def unknown(request: Request, exc: CommitOutcomeUnknownError) -> JSONResponse:
        return JSONResponse({"error": "commit_outcome_unknown"}, status_code=500)

    @app.post("/sync/{name}")
    def sync_create(
        name: str, cut: CutMode | None = None, session: Session = Depends(db.session)
    ) -> str:
        session.add(Item(name=name))
        session.flush()
        if cut is not None:
            proxy.cut_at_commit(cut)
        return name

    @app.post("/async/{name}")
    async def async_create(
        name: str, cut: CutMode | None = None, session: AsyncSession = Depends(db.async_session)
    ) -> str:
        session.add(Item(name=name))
        await session.flush()
        if cut is not None:
            proxy.cut_at_commit(cut)
        return name

    return app


@pytest.mark.parametrize("cut", ["before", "after"])
async def test_connection_lost_during_commit_is_reported_as_unknown(
    server_backend: Backend,
    proxy: CuttingProxy,
    *,
    side: str,
    cut: CutMode,
    caplog: pytest.LogCaptureFixture,
    anyio_backend: str,
) -> None:
    db = _manager(server_backend, proxy.port)
    watch = PoolWatch(db.engine if side == "sync" else db.async_engine)
    app = _app(db, proxy)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            with caplog.at_level(logging.ERROR, logger="fastapi_dbsession"):
                response = await client.post(f"/{side}/lost", params={"cut": cut})
            assert response.status_code == 500
            assert response.json() == {"error": "commit_outcome_unknown"}
            assert proxy.cuts[cut] == 1
            # the truth on the server: the proxy let COMMIT through ("after") or not
            expected = 1 if cut == "after" else 0
            assert server_backend.count(where="WHERE name = 'lost'") == expected
            records = [r for r in caplog.records if "commit outcome unknown" in r.getMessage()]
            assert [r.levelno for r in records] == [logging.ERROR]
            # the dead connection was discarded: the next request commits normally
            assert (await client.post(f"/{side}/next")).status_code == 200
            assert server_backend.count(where="WHERE name = 'next'") == 1
            assert watch.out == 0
    finally:
        db.dispose()
        await db.async_dispose()


async def test_retries_never_rerun_a_commit_of_unknown_outcome(
    server_backend: Backend, proxy: CuttingProxy, side: str, anyio_backend: str
) -> None:
    db = _manager(server_backend, proxy.port)
    attempts: list[int] = []

    @db.transactional(retries=3)
    def sync_unit(session: Session) -> None:
        attempts.append(1)
        session.add(Item(name="once"))
        session.flush()
        proxy.cut_at_commit("after")

    @db.transactional(retries=3)
    async def async_unit(session: AsyncSession) -> None:
        attempts.append(1)
        session.add(Item(name="once"))
        await session.flush()
        proxy.cut_at_commit("after")

    try:
        with pytest.raises(CommitOutcomeUnknownError, match="not retried"):
            if side == "sync":
                await anyio.to_thread.run_sync(sync_unit)
            else:
                await async_unit()
        assert attempts == [1]
        assert server_backend.count(where="WHERE name = 'once'") == 1
    finally:
        db.dispose()
        await db.async_dispose()


async def test_transaction_block_raises_unknown_outcome(
    server_backend: Backend, proxy: CuttingProxy, side: str, anyio_backend: str
) -> None:
    db = _manager(server_backend, proxy.port)
    try:
        with pytest.raises(CommitOutcomeUnknownError):
            if side == "sync":
                with db.transaction() as session:
                    session.add(Item(name="block"))
                    session.flush()
                    proxy.cut_at_commit("before")
            else:
                async with db.async_transaction() as async_session:
                    async_session.add(Item(name="block"))
                    await async_session.flush()
                    proxy.cut_at_commit("before")
        assert server_backend.count(where="WHERE name = 'block'") == 0
    finally:
        db.dispose()
        await db.async_dispose()


# -- PostgreSQL: the backend killed while COMMIT runs ---------------------------------------

_SLOW_COMMIT = (
    "CREATE TABLE IF NOT EXISTS slow_commit (id int)",
    "CREATE OR REPLACE FUNCTION slow_commit_check() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS slow_commit_trigger ON slow_commit",
    "CREATE CONSTRAINT TRIGGER slow_commit_trigger AFTER INSERT ON slow_commit "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit_check()",
)


def _kill_backend_in_commit(backend: Backend, stop: threading.Event, killed: list[int]) -> None:
    """Kill, once, the backend of our test database whose query is COMMIT."""
    engine = create_engine(backend.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SET application_name = 'fdbs-killer'"))
            while not stop.is_set() and not killed:
                pids = connection.scalars(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND state = 'active' "
                        "AND upper(query) LIKE 'COMMIT%'"
                    )
                ).all()
                for pid in pids:
                    connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    killed.append(pid)
                connection.commit()
                time.sleep(0.05)
    finally:
        engine.dispose()


@pytest.mark.postgresql
async def test_backend_killed_during_commit_raises_unknown_outcome(
    request: pytest.FixtureRequest, side: str, anyio_backend: str
) -> None:
    url = request.getfixturevalue("postgres_schema")
    backend = Backend("postgresql", url, url.set(drivername="postgresql+asyncpg"))
    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as connection:
        for statement in _SLOW_COMMIT:
            connection.execute(text(statement))
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=_kill_backend_in_commit, args=(backend, stop, killed))
    killer.start()
    try:
        with pytest.raises(CommitOutcomeUnknownError):
            if side == "sync":
                with db.transaction() as session:
                    session.execute(text("INSERT INTO slow_commit VALUES (1)"))
            else:
                async with db.async_transaction() as async_session:
                    await async_session.execute(text("INSERT INTO slow_commit VALUES (1)"))
        stop.set()
        killer.join()
        assert len(killed) == 1
        # killed before the commit record was written: PostgreSQL rolled it back
        assert backend.count("slow_commit") == 0
        engine = db.engine if side == "sync" else db.async_engine
        assert engine.pool.checkedout() == 0
    finally:
        stop.set()
        killer.join()
        db.dispose()
        await db.async_dispose()
        with admin.begin() as connection:
            connection.execute(text("DROP TABLE slow_commit"))
            connection.execute(text("DROP FUNCTION slow_commit_check()"))
        admin.dispose()
