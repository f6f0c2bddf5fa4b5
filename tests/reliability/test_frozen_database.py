"""A database that stops answering: requests get an error within the deadline, not the freeze.

The test's own PostgreSQL cluster is frozen with SIGSTOP (every process: sockets stay open,
the kernel still acknowledges, nothing answers) for 4 seconds while requests are in flight,
behind a real uvicorn, with ``pool_timeout=2`` and ``command_timeout=1``. Without a
client-side deadline every in-flight request hangs for the whole freeze. With it, each
request answers within its deadlines (command, connect, pool wait) plus a second, the stuck
connections are invalidated (never lent again), and once the server thaws requests succeed.
"""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from tests.clusters import Cluster, Topology
from tests.reliability.servers import uvicorn_server

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


def _app(db: DatabaseSessionManager) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/sync")
    def sync_write(hold: float = 0, session: Session = Depends(db.session)) -> int:
        session.execute(text("INSERT INTO marks (at) SELECT now() FROM pg_sleep(:s)"), {"s": hold})
        return int(session.execute(text("SELECT count(*) FROM marks")).scalar_one())

    @app.post("/async")
    async def async_write(
        hold: float = 0, session: AsyncSession = Depends(db.async_session)
    ) -> int:
        sql = text("INSERT INTO marks (at) SELECT now() FROM pg_sleep(:s)")
        await session.execute(sql, {"s": hold})
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


@pytest.fixture
def frozen_cluster(topology: Topology) -> Cluster:
    cluster = topology.primary(name="frozen")
    cluster.execute("CREATE TABLE marks (id serial PRIMARY KEY, at timestamptz)")
    return cluster


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


# (sync driver, async driver, side): every PostgreSQL driver we support, both sides
DRIVERS = {
    "psycopg-sync": ("psycopg", "asyncpg", "sync"),
    "psycopg2-sync": ("psycopg2", "asyncpg", "sync"),
    "psycopg-async": ("psycopg", "psycopg", "async"),
    "asyncpg-async": ("psycopg", "asyncpg", "async"),
}


@pytest.mark.parametrize("setup", list(DRIVERS))
async def test_frozen_server_answers_within_the_deadline(
    frozen_cluster: Cluster, setup: str, anyio_backend: str
) -> None:
    sync_driver, async_driver, side = DRIVERS[setup]
    options = {"pool_size": 2, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT}
    db = DatabaseSessionManager(
        frozen_cluster.url(sync_driver),
        async_url=frozen_cluster.url(async_driver),
        engine_options=options,
        command_timeout=COMMAND_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
    )
    engine = db.engine if side == "sync" else db.async_engine.sync_engine
    pool = _PoolWatch(engine)
    durations: list[float] = []
    statuses: list[int] = []
    with uvicorn_server(_app(db)) as base_url:
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

            thaw = threading.Timer(FREEZE, frozen_cluster.unfreeze)
            frozen_cluster.freeze()
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
    # the others waited for the pool, then for a new connection: bounded by those deadlines,
    # and none of the errors waited for the thaw
    assert max(durations) < POOL_TIMEOUT + CONNECT_TIMEOUT + 1, (durations, statuses)
    assert max(errors) < FREEZE - 0.5, (durations, statuses)
    # a request answered 2xx only because the server thawed while it was connecting
    for duration, status in zip(durations, statuses, strict=True):
        assert status >= 500 or (status == 200 and duration >= FREEZE - 0.5), (duration, status)
    assert answered_by < FREEZE + 1
    assert recovered == [200] * 5
    assert checked_out == 0
