"""Connections that died while idle in the pool never fail the requests that come next.

The server ends idle connections (a restart, a failover, an idle timeout, ``pg_terminate_backend``
or ``KILL`` here); the pool does not notice until it lends one out. The manager's default check
costs no round trip (the driver's closed state, then a zero-timeout poll of the socket; the real
ping only when something arrived) and replaces a dead connection, so the next requests all
succeed, on every driver. A connection that dies between that check and the transaction's first
statement is replaced and the statement sent again; one that dies after something was sent
fails only its own request, which rolls back (503 with ``Retry-After``). With the check switched off
(``pool_pre_ping=False``) the same kill fails requests: the tests can tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import URL, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fastapi_dbsession import DatabaseSessionManager
from tests.conftest import Backend

pytestmark = [
    pytest.mark.reliability,  # part of the fault-injection suite (docs/guarantees.md)
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

POOL = 4
REQUESTS = 20


@dataclass(frozen=True)
class Server:
    """A real server's test database, reached through one sync and one async driver."""

    backend: Backend
    connection_id_sql: str
    kill_sql: str
    alive_sql: str

    @property
    def name(self) -> str:
        return self.backend.name


_POSTGRES = (
    "SELECT pg_backend_pid()",
    "SELECT pg_terminate_backend({})",
    "SELECT count(*) FROM pg_stat_activity WHERE pid IN ({})",
)
_MARIADB = (
    "SELECT CONNECTION_ID()",
    "KILL {}",
    "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ({})",
)


_DRIVERS = [
    pytest.param(("postgresql+psycopg", "sync"), marks=pytest.mark.postgresql, id="psycopg"),
    pytest.param(("postgresql+psycopg2", "sync"), marks=pytest.mark.postgresql, id="psycopg2"),
    pytest.param(("postgresql+psycopg", "async"), marks=pytest.mark.postgresql, id="asyncpg"),
    pytest.param(("mysql+pymysql", "sync"), marks=pytest.mark.mariadb, id="pymysql"),
    pytest.param(("mysql+pymysql", "async"), marks=pytest.mark.mariadb, id="aiomysql"),
]


@pytest.fixture(params=_DRIVERS)
def driver(request: pytest.FixtureRequest) -> tuple[Server, str]:
    """Every driver we support, on its real server, with the side of the app that uses it
    (psycopg 3 and psycopg2 through the sync side, asyncpg and aiomysql through the async)."""
    sync_driver, side = request.param
    if sync_driver.startswith("postgresql"):
        url: URL = request.getfixturevalue("postgres_schema")
        backend = Backend(
            "postgresql",
            url.set(drivername=sync_driver),
            url.set(drivername="postgresql+asyncpg"),
        )
        return Server(backend, *_POSTGRES), side
    url = request.getfixturevalue("mariadb_schema")
    backend = Backend("mariadb", url, url.set(drivername="mysql+aiomysql"))
    return Server(backend, *_MARIADB), side


@pytest.fixture
def server(driver: tuple[Server, str]) -> Server:
    return driver[0]


@pytest.fixture
def app_side(driver: tuple[Server, str]) -> str:
    return driver[1]


def _app(db: DatabaseSessionManager, server: Server, after_write: Callable[[int], None]) -> FastAPI:
    app = FastAPI()
    sql = server.connection_id_sql

    @app.get("/sync")
    def sync_id(session: Session = Depends(db.session)) -> int:
        return int(session.execute(text(sql)).scalar_one())

    @app.get("/async")
    async def async_id(session: AsyncSession = Depends(db.async_session)) -> int:
        return int((await session.execute(text(sql))).scalar_one())

    @app.post("/sync/items")
    def sync_write(session: Session = Depends(db.session)) -> int:
        session.execute(text("INSERT INTO items (name) VALUES ('mid-transaction')"))
        own = int(session.execute(text(sql)).scalar_one())
        after_write(own)  # the server drops this connection here
        return int(session.execute(text(sql)).scalar_one())

    @app.post("/async/items")
    async def async_write(session: AsyncSession = Depends(db.async_session)) -> int:
        await session.execute(text("INSERT INTO items (name) VALUES ('mid-transaction')"))
        own = int((await session.execute(text(sql))).scalar_one())
        after_write(own)
        return int((await session.execute(text(sql))).scalar_one())

    @app.post("/sync/refused")
    def sync_refused(session: Session = Depends(db.session)) -> None:
        session.execute(text("INSERT INTO items (name) VALUES ('refused')"))
        after_write(int(session.execute(text(sql)).scalar_one()))
        raise HTTPException(409)  # the unit rolls back, on a connection the server ended

    @app.post("/async/refused")
    async def async_refused(session: AsyncSession = Depends(db.async_session)) -> None:
        await session.execute(text("INSERT INTO items (name) VALUES ('refused')"))
        after_write(int((await session.execute(text(sql))).scalar_one()))
        raise HTTPException(409)

    return app


async def _fill_pool(db: DatabaseSessionManager, server: Server, side: str) -> dict[int, int]:
    """Make the pool hold ``POOL`` idle connections; return {id(DBAPI connection): server id}."""
    sql = text(server.connection_id_sql)
    ids: dict[int, int] = {}
    if side == "sync":
        connections = [db.engine.connect() for _ in range(POOL)]
        for connection in connections:
            raw = connection.connection.dbapi_connection
            ids[id(raw)] = int(connection.execute(sql).scalar_one())
            connection.close()
    else:
        async_connections = [await db.async_engine.connect() for _ in range(POOL)]
        for async_connection in async_connections:
            raw = (await async_connection.get_raw_connection()).dbapi_connection
            ids[id(raw)] = int((await async_connection.execute(sql)).scalar_one())
            await async_connection.close()
    return ids


def kill(server: Server, ids: set[int]) -> None:
    """End the connections on the server and wait until it says they are gone."""
    admin = create_engine(server.backend.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    listed = ", ".join(str(int(connection_id)) for connection_id in ids)
    try:
        with admin.connect() as connection:
            for connection_id in ids:
                connection.execute(text(server.kill_sql.format(int(connection_id))))
            for _ in range(200):
                if not connection.execute(text(server.alive_sql.format(listed))).scalar():
                    return
                time.sleep(0.01)
    finally:
        admin.dispose()


def _manager(server: Server, **engine_options: object) -> DatabaseSessionManager:
    return DatabaseSessionManager(
        server.backend.url,
        async_url=server.backend.async_url,
        engine_options={"pool_size": POOL, "max_overflow": 0, **engine_options},
    )


async def _send(app: FastAPI, method: str, path: str, count: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [await client.request(method, path) for _ in range(count)]


async def _reads_after_kill(
    server: Server, side: str, *, settle: float, **engine_options: object
) -> tuple[list[int], set[int], set[int]]:
    db = _manager(server, **engine_options)
    app = _app(db, server, lambda own: None)
    try:
        killed = set((await _fill_pool(db, server, side)).values())
        kill(server, killed)
        if settle:
            await anyio.sleep(settle)  # the event loop runs: asyncio drivers see the EOF
        responses = await _send(app, "GET", f"/{side}", REQUESTS)
        seen = {int(r.json()) for r in responses if r.status_code == 200}
        return [r.status_code for r in responses], killed, seen
    finally:
        await db.async_dispose()
        db.dispose()


@pytest.mark.parametrize("settle", [0.1, 0.0], ids=["killed-earlier", "killed-just-now"])
async def test_requests_after_idle_connections_are_killed_all_succeed(
    server: Server, app_side: str, settle: float, anyio_backend: str
) -> None:
    statuses, killed, seen = await _reads_after_kill(server, app_side, settle=settle)

    assert len(killed) == POOL
    assert statuses == [200] * REQUESTS
    assert not seen & killed  # no answer came from a killed connection


async def test_explicit_pool_pre_ping_still_works(
    server: Server, app_side: str, anyio_backend: str
) -> None:
    """pool_pre_ping=True (a real ping per checkout) stays available and safe."""
    statuses, _, _ = await _reads_after_kill(server, app_side, settle=0.1, pool_pre_ping=True)

    assert statuses == [200] * REQUESTS


async def test_without_the_check_killed_connections_fail_requests(
    server: Server, app_side: str, anyio_backend: str
) -> None:
    """The control: the same kill with pool_pre_ping=False does fail requests (503s: the
    connection was lost, nothing was committed, the client may retry)."""
    statuses, _, _ = await _reads_after_kill(server, app_side, settle=0.1, pool_pre_ping=False)

    assert 503 in statuses
    assert statuses[-1] == 200  # the pool replaces what failed: the app recovers


async def test_a_connection_dying_before_the_first_statement_is_replaced_and_resent(
    server: Server, app_side: str, anyio_backend: str
) -> None:
    """The connection passes the check, then the server drops it before the first statement
    (a test listener kills it right after our check): the statement goes out again on a new
    connection and the request succeeds."""
    db = _manager(server)
    app = _app(db, server, lambda own: None)
    killed: set[int] = set()
    engine = db.async_engine.sync_engine if app_side == "async" else db.engine
    try:
        pooled = await _fill_pool(db, server, app_side)

        @event.listens_for(engine, "checkout")
        def kill_after_the_check(dbapi_connection: object, *args: object) -> None:
            victim = pooled.pop(id(dbapi_connection), None)
            if victim is not None:  # one of the pooled ones, lent for the first time since
                kill(server, {victim})
                killed.add(victim)

        responses = await _send(app, "GET", f"/{app_side}", POOL + 2)
        event.remove(engine, "checkout", kill_after_the_check)
    finally:
        await db.async_dispose()
        db.dispose()

    assert [r.status_code for r in responses] == [200] * (POOL + 2)
    assert len(killed) == POOL
    assert not {int(r.json()) for r in responses} & killed


async def _killed_mid_request(
    server: Server, side: str, path: str
) -> tuple[httpx.Response, list[httpx.Response]]:
    """POST ``path``, whose connection the server ends mid-request, then 5 reads."""
    db = _manager(server)
    app = _app(db, server, lambda own: kill(server, {own}))
    try:
        [failed] = await _send(app, "POST", f"/{side}/{path}", 1)
        after = await _send(app, "GET", f"/{side}", 5)
    finally:
        await db.async_dispose()
        db.dispose()
    return failed, after


async def test_a_connection_dying_mid_transaction_fails_only_that_request(
    server: Server, app_side: str, anyio_backend: str
) -> None:
    """Once something was sent, nothing is re-sent: that request fails and rolls back (its
    INSERT is absent), and the next requests are served."""
    failed, after = await _killed_mid_request(server, app_side, "items")

    assert failed.status_code == 503  # lost connection, rolled back: retry
    assert failed.headers["retry-after"] == "1"
    assert server.backend.count(where="WHERE name = 'mid-transaction'") == 0
    assert [r.status_code for r in after] == [200] * 5


async def test_a_rollback_on_a_connection_the_server_ended_keeps_the_response(
    server: Server, app_side: str, anyio_backend: str
) -> None:
    """The request ends in an error status (commit=False), and its ROLLBACK is the first round
    trip after the server ended the connection: the client still gets its 409 (no raw driver
    error, no dropped HTTP connection), nothing persisted, the next requests are served."""
    refused, after = await _killed_mid_request(server, app_side, "refused")

    assert refused.status_code == 409
    assert server.backend.count(where="WHERE name = 'refused'") == 0
    assert [r.status_code for r in after] == [200] * 5
