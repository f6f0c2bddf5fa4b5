"""A database that stops answering: requests get an error within the deadline, not the freeze.

The test's own server (a PostgreSQL cluster from tests/clusters.py, or a MariaDB server from
tests/mariadb.py; never the shared ones) is frozen with SIGSTOP (every process: sockets stay
open, the kernel still acknowledges and accepts, nothing answers) for 4 seconds while six
requests are in flight, behind a real uvicorn, with a pool of 2, ``pool_timeout=2``,
``command_timeout=1`` and ``connect_timeout=2``, for every driver on both sides. Without a
client-side deadline every in-flight request hangs for the whole freeze. With it, each request
answers 503 within its deadlines (command; pool wait, then connect and handshake) and before
the thaw, the two stuck connections are invalidated (never returned to the pool, never lent
again), and once the server thaws requests succeed with nothing left checked out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from tests._servers import ToolMissingError
from tests.clusters import Cluster
from tests.mariadb import MariaDB
from tests.reliability.servers import uvicorn_server
from tests.topology import _tool_missing

pytestmark = [
    pytest.mark.topology,
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

FREEZE = 4.0
COMMAND_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0  # libpq's smallest useful connect_timeout
POOL_TIMEOUT = 2.0
IN_FLIGHT = 6

FIGURES: dict[str, dict[str, object]] = {}
"""What the last run measured, by setup (printed with ``pytest -s``)."""


# the write each request makes, after holding its connection ``:s`` seconds
WRITE = {
    "postgresql": "INSERT INTO marks (at) SELECT now() FROM pg_sleep(:s)",
    "mariadb": "INSERT INTO marks (at) SELECT NOW(6) FROM (SELECT SLEEP(:s)) AS pause",
}


def _app(db: DatabaseSessionManager, backend: str) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    write = text(WRITE[backend])

    @app.post("/sync")
    def sync_write(hold: float = 0, session: Session = Depends(db.session)) -> int:
        session.execute(write, {"s": hold})
        return int(session.execute(text("SELECT count(*) FROM marks")).scalar_one())

    @app.post("/async")
    async def async_write(
        hold: float = 0, session: AsyncSession = Depends(db.async_session)
    ) -> int:
        await session.execute(write, {"s": hold})
        return int((await session.execute(text("SELECT count(*) FROM marks"))).scalar_one())

    return app


async def _concurrently(client: httpx.AsyncClient, path: str, count: int) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await client.post(path))

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return responses


# setup -> (backend, sync driver, async driver, side): every driver we support, both sides
SETUPS = {
    "psycopg-sync": ("postgresql", "psycopg", "asyncpg", "sync"),
    "psycopg2-sync": ("postgresql", "psycopg2", "asyncpg", "sync"),
    "psycopg-async": ("postgresql", "psycopg", "psycopg", "async"),
    "asyncpg-async": ("postgresql", "psycopg", "asyncpg", "async"),
    "pymysql-sync": ("mariadb", "pymysql", "aiomysql", "sync"),
    "aiomysql-async": ("mariadb", "pymysql", "aiomysql", "async"),
}


@pytest.fixture(params=list(SETUPS))
def setup(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def frozen_server(setup: str, request: pytest.FixtureRequest) -> Iterator[Cluster | MariaDB]:
    """The test's own server (PostgreSQL cluster or MariaDB) with an empty table ``marks``."""
    if SETUPS[setup][0] == "postgresql":
        cluster = request.getfixturevalue("topology").primary(name="frozen")
        cluster.execute("CREATE TABLE marks (id serial PRIMARY KEY, at timestamptz)")
        yield cluster
        return
    try:
        server = MariaDB.create()
    except ToolMissingError as exc:
        _tool_missing(exc)
    try:
        server.execute(
            "CREATE TABLE marks (id int AUTO_INCREMENT PRIMARY KEY, at datetime(6))", "test"
        )
        yield server
    finally:
        server.close()


class _PoolWatch:
    """What the pool lent, took back and discarded (DBAPI connections, held: no id reuse)."""

    def __init__(self, engine: Engine) -> None:
        self.lent: list[object] = []
        self.returned: list[object] = []
        self.invalidated: list[object] = []
        event.listen(engine, "checkout", lambda dbapi, *_: self.lent.append(dbapi))
        event.listen(engine, "checkin", lambda dbapi, *_: self.returned.append(dbapi))
        event.listen(engine, "invalidate", lambda dbapi, *_: self.invalidated.append(dbapi))

    def since(self, mark: tuple[int, int]) -> tuple[list[object], list[object]]:
        """Connections lent and returned since ``mark`` (from :meth:`mark`)."""
        return self.lent[mark[0] :], self.returned[mark[1] :]

    def mark(self) -> tuple[int, int]:
        return len(self.lent), len(self.returned)


async def test_frozen_server_answers_within_the_deadline(
    frozen_server: Cluster | MariaDB, setup: str, anyio_backend: str
) -> None:
    backend, sync_driver, async_driver, side = SETUPS[setup]
    options = {"pool_size": 2, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT}
    db = DatabaseSessionManager(
        frozen_server.url(sync_driver),
        async_url=frozen_server.url(async_driver),
        engine_options=options,
        command_timeout=COMMAND_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
    )
    engine = db.engine if side == "sync" else db.async_engine.sync_engine
    pool = _PoolWatch(engine)
    durations: list[float] = []
    statuses: list[int] = []
    with uvicorn_server(_app(db, backend)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            warm = await _concurrently(client, f"/{side}?hold=0.3", 2)  # the pool holds 2
            assert [response.status_code for response in warm] == [200, 200]
            before_freeze = pool.mark()

            async def request() -> None:
                started = time.monotonic()
                response = await client.post(f"/{side}")
                durations.append(time.monotonic() - started)
                statuses.append(response.status_code)  # (appended together: same order)
                if response.status_code >= 500:
                    assert response.status_code == 503, response.text
                    assert response.headers["Retry-After"] == "1"

            thaw = threading.Timer(FREEZE, frozen_server.unfreeze)
            frozen_server.freeze()
            frozen_at = time.monotonic()
            thaw.start()
            try:
                async with anyio.create_task_group() as group:
                    for _ in range(IN_FLIGHT):
                        group.start_soon(request)
            finally:
                thaw.join()
            answered_by = time.monotonic() - frozen_at
            after_thaw = pool.mark()
            # the server is back: requests succeed again, on fresh connections
            recovered = [(await client.post(f"/{side}")).status_code for _ in range(5)]
        checked_out = engine.pool.checkedout()
    lent_in_freeze, returned_in_freeze = pool.since(before_freeze)
    stuck = [conn for conn in lent_in_freeze[:2] if any(conn is c for c in pool.invalidated)]
    lent_after = pool.since(after_thaw)[0]
    came_back = [
        conn for conn in stuck if any(conn is c for c in [*returned_in_freeze, *lent_after])
    ]
    FIGURES[setup] = {
        "longest request during the freeze, s": round(max(durations), 2),
        "durations, s": sorted(round(duration, 2) for duration in durations),
        "statuses": sorted(statuses),
        "checked out after": checked_out,
        "stuck connections": len(stuck),
        "stuck connections back in the pool": len(came_back),
    }
    print(f"\nfrozen {FREEZE:g} s, {setup}: {FIGURES[setup]}")  # the figures of the report
    assert len(statuses) == IN_FLIGHT
    # the two requests holding the pooled connections: 503 one command_timeout later
    assert len(stuck) == 2, (pool.lent, pool.invalidated)
    assert came_back == []  # never returned to the pool, never lent again
    errors = [d for d, status in zip(durations, statuses, strict=True) if status >= 500]
    assert len([d for d in errors if d < COMMAND_TIMEOUT + 1]) >= 2, (durations, statuses)
    # the others waited for the pool, then for a new connection (its handshake included):
    # bounded by those deadlines, all answered 503 before the server thawed
    assert statuses == [503] * IN_FLIGHT, (durations, statuses)
    assert max(durations) < min(POOL_TIMEOUT + CONNECT_TIMEOUT + 1, FREEZE - 0.25), durations
    assert answered_by < FREEZE + 1
    assert recovered == [200] * 5
    assert checked_out == 0
