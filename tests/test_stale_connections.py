"""Connections that died while idle in the pool never fail the requests that come next.

The server ends idle connections (a restart, a failover, an idle timeout, ``pg_terminate_backend``
here); the pool does not notice until it lends one out. The manager's default checks each
connection as it is lent and replaces a dead one, so the next requests all succeed. With the
check switched off (``pool_pre_ping=False``) the same kill fails requests: the test can tell.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fastapi_dbsession import DatabaseSessionManager
from tests.conftest import Backend

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

POOL = 4
REQUESTS = 20
_CONNECTION_ID = {"postgresql": "SELECT pg_backend_pid()", "mariadb": "SELECT CONNECTION_ID()"}
_KILL = {"postgresql": "SELECT pg_terminate_backend({})", "mariadb": "KILL {}"}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server(request: pytest.FixtureRequest) -> Backend:
    """A real server's test database (SQLite has no connections to kill)."""
    fixture = "postgres_schema" if request.param == "postgresql" else "mariadb_schema"
    url = request.getfixturevalue(fixture)
    async_driver = "postgresql+asyncpg" if request.param == "postgresql" else "mysql+aiomysql"
    return Backend(request.param, url, url.set(drivername=async_driver))


def _app(db: DatabaseSessionManager, sql: str) -> FastAPI:
    app = FastAPI()

    @app.get("/sync")
    def sync_id(session: Session = Depends(db.session)) -> int:
        return int(session.execute(text(sql)).scalar_one())

    @app.get("/async")
    async def async_id(session: AsyncSession = Depends(db.async_session)) -> int:
        return int((await session.execute(text(sql))).scalar_one())

    return app


async def _fill_pool(db: DatabaseSessionManager, side: str, sql: str) -> set[int]:
    """Make the pool hold ``POOL`` idle connections; return their server-side ids."""
    ids: set[int] = set()
    if side == "sync":
        connections = [db.engine.connect() for _ in range(POOL)]
        for connection in connections:
            ids.add(int(connection.execute(text(sql)).scalar_one()))
            connection.close()
    else:
        async_connections = [await db.async_engine.connect() for _ in range(POOL)]
        for async_connection in async_connections:
            ids.add(int((await async_connection.execute(text(sql))).scalar_one()))
            await async_connection.close()
    return ids


_ALIVE = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid IN ({})",
    "mariadb": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ({})",
}


async def _kill(server: Backend, ids: set[int]) -> None:
    """End the connections on the server and wait until it says they are gone, then give the
    event loop a moment, as the time between a server-side kill and the next request would."""
    admin = create_engine(server.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    listed = ", ".join(str(int(connection_id)) for connection_id in ids)
    try:
        with admin.connect() as connection:
            for connection_id in ids:
                connection.execute(text(_KILL[server.name].format(int(connection_id))))
            for _ in range(100):
                if not connection.execute(text(_ALIVE[server.name].format(listed))).scalar():
                    break
                await anyio.sleep(0.02)
    finally:
        admin.dispose()
    await anyio.sleep(0.1)


async def _requests_after_kill(
    server: Backend, side: str, engine_options: dict[str, object]
) -> tuple[list[int], set[int]]:
    sql = _CONNECTION_ID[server.name]
    db = DatabaseSessionManager(
        server.url,
        async_url=server.async_url,
        engine_options={"pool_size": POOL, "max_overflow": 0, **engine_options},
    )
    app = _app(db, sql)
    try:
        killed = await _fill_pool(db, side, sql)
        await _kill(server, killed)
        statuses: list[int] = []
        seen: set[int] = set()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(REQUESTS):
                response = await client.get(f"/{side}")
                statuses.append(response.status_code)
                if response.status_code == 200:
                    seen.add(int(response.json()))
        assert not seen & killed  # no answer came from a killed connection
        return statuses, killed
    finally:
        await db.async_dispose()
        db.dispose()


async def test_requests_after_idle_connections_are_killed_all_succeed(
    server: Backend, side: str, anyio_backend: str
) -> None:
    statuses, killed = await _requests_after_kill(server, side, {})

    assert len(killed) == POOL
    assert statuses == [200] * REQUESTS


async def test_without_the_check_killed_connections_fail_requests(
    server: Backend, side: str, anyio_backend: str
) -> None:
    """The control: the same kill with pool_pre_ping=False does fail requests (500s)."""
    statuses, _ = await _requests_after_kill(server, side, {"pool_pre_ping": False})

    assert 500 in statuses
    assert statuses[-1] == 200  # the pool replaces what failed: the app recovers
