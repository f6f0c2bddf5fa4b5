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
from sqlalchemy import event, text
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

FIGURES: dict[str, float] = {}
"""What the last run measured (tests/reliability/test_report.py prints them)."""


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


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_frozen_server_answers_within_the_deadline(
    frozen_cluster: Cluster, driver: str, anyio_backend: str
) -> None:
    side = "sync" if driver == "psycopg" else "async"
    options = {"pool_size": 2, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT}
    db = DatabaseSessionManager(
        frozen_cluster.url("psycopg"),
        async_url=frozen_cluster.url("asyncpg"),
        engine_options=options,
        command_timeout=COMMAND_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
    )
    engine = db.engine if side == "sync" else db.async_engine.sync_engine
    invalidated: list[object] = []
    event.listen(engine, "invalidate", lambda *args: invalidated.append(args[0]))
    durations: list[float] = []
    statuses: list[int] = []
    with uvicorn_server(_app(db)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            warm = await _concurrently(client, f"/{side}?hold=0.3", 2)  # the pool holds 2
            assert [response.status_code for response in warm] == [200, 200]

            async def request() -> None:
                started = time.monotonic()
                response = await client.post(f"/{side}")
                durations.append(time.monotonic() - started)
                statuses.append(response.status_code)  # (appended together: same order)

            thaw = threading.Timer(FREEZE, frozen_cluster.unfreeze)
            frozen_cluster.freeze()
            thaw.start()
            try:
                async with anyio.create_task_group() as group:
                    for _ in range(IN_FLIGHT):
                        group.start_soon(request)
            finally:
                thaw.join()
            # the server is back: requests succeed again, on fresh connections
            recovered = [(await client.post(f"/{side}")).status_code for _ in range(5)]
        checked_out = engine.pool.checkedout()
    FIGURES[f"longest request during the freeze ({driver}), s"] = max(durations)
    assert len(statuses) == IN_FLIGHT
    # the requests holding the two pooled connections: an error one deadline later
    in_flight = [d for d, status in zip(durations, statuses, strict=True) if status >= 500]
    assert len([d for d in in_flight if d < COMMAND_TIMEOUT + 1]) >= 2, (durations, statuses)
    # the others waited for the pool, then for a new connection: bounded by those deadlines;
    # a request answered 2xx only because the server thawed while it was connecting
    assert max(durations) < POOL_TIMEOUT + CONNECT_TIMEOUT + 1, (durations, statuses)
    for duration, status in zip(durations, statuses, strict=True):
        assert status >= 500 or (status == 200 and duration >= FREEZE - 0.5), (duration, status)
    assert len(invalidated) >= 2  # the two stuck pooled connections, discarded
    assert recovered == [200] * 5
    assert checked_out == 0
