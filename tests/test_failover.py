"""Failover on a real primary + hot standby: fast 503s, then writes on the new primary.

The app's URL names both servers with ``target_session_attrs=read-write``. Writers keep
inserting numbered rows; the primary is stopped at once (``immediate``: a crash, no shutdown
checkpoint) and, a moment later, the standby is promoted. Every request must get either 200
(its row committed) or 503 with ``Retry-After`` (nothing committed), except at most one request
per writer whose COMMIT was cut off (outcome unknown: 500). Once the standby takes writes, the
app writes there by itself: no restart, no dispose. Every acknowledged row must be on the new
primary when the standby is synchronous (``synchronous_standby_names``); with an asynchronous
one the test measures how many were lost. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from tests.clusters import Cluster, Topology

pytestmark = [
    pytest.mark.topology,
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

WRITERS = 8
WARM_WRITES = 20
AFTER_WRITES = 20
OUTAGE_BEFORE_PROMOTE = 0.5  # seconds between the primary's crash and the promotion
INSERT = "INSERT INTO writes (n) VALUES (:n)"
PORT = "SELECT inet_server_port()"
REPLICATION = pytest.mark.parametrize(
    "synchronous", [True, False], ids=["sync-replication", "async-replication"]
)


@dataclass
class Run:
    """What the writers saw."""

    acknowledged: dict[int, int] = field(default_factory=dict)  # n -> server port
    statuses: dict[int, int] = field(default_factory=dict)  # status -> count
    retry_after: set[str] = field(default_factory=set)
    first_new_primary_write: float | None = None


def build_app(db: DatabaseSessionManager, *, is_async: bool) -> FastAPI:
    app = FastAPI()
    if is_async:

        @app.post("/writes/{n}")
        async def write_async(n: int, session: AsyncSession = Depends(db.async_session)) -> int:
            await session.execute(text(INSERT), {"n": n})
            return int((await session.execute(text(PORT))).scalar_one())

    else:

        @app.post("/writes/{n}")
        def write(n: int, session: Session = Depends(db.session)) -> int:
            session.execute(text(INSERT), {"n": n})
            return int(session.execute(text(PORT)).scalar_one())

    return app


def _urls(primary: Cluster, standby: Cluster, driver: str) -> str:
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"  # libpq's form
    return f"postgresql+{driver}://postgres@{hosts}/postgres?target_session_attrs=read-write"


@REPLICATION
@pytest.mark.parametrize(("driver", "is_async"), [("psycopg", False), ("asyncpg", True)])
async def test_failover_answers_503_then_writes_on_the_new_primary(
    topology: Topology, driver: str, is_async: bool, synchronous: bool
) -> None:
    primary = topology.primary()
    standby = topology.standby(primary, synchronous=synchronous)
    primary.execute("CREATE TABLE writes (n int PRIMARY KEY)")
    standby.wait_replayed()
    url = _urls(primary, standby, driver)
    options = {"pool_size": 4, "max_overflow": 4}
    db = (
        DatabaseSessionManager(async_url=url, engine_options=options)
        if is_async
        else DatabaseSessionManager(url, engine_options=options)
    )
    app = build_app(db, is_async=is_async)
    run = Run()
    numbers = itertools.count()
    stop_writing, warm, recovered = anyio.Event(), anyio.Event(), anyio.Event()
    crashed = promoted = 0.0

    async def writer(client: httpx.AsyncClient) -> None:
        while not stop_writing.is_set():
            n = next(numbers)
            response = await client.post(f"/writes/{n}")
            run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                run.acknowledged[n] = response.json()
                if response.json() == standby.port and run.first_new_primary_write is None:
                    run.first_new_primary_write = time.monotonic()
                if len(run.acknowledged) >= WARM_WRITES:
                    warm.set()
                on_new = sum(port == standby.port for port in run.acknowledged.values())
                if on_new >= AFTER_WRITES:
                    recovered.set()
            elif response.status_code == 503:
                run.retry_after.add(response.headers.get("retry-after", ""))
            await anyio.sleep(0.005)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            anyio.create_task_group() as group,
        ):
            for _ in range(WRITERS):
                group.start_soon(writer, client)
            with anyio.fail_after(30):
                await warm.wait()
            assert set(run.acknowledged.values()) == {primary.port}
            await anyio.to_thread.run_sync(lambda: primary.stop("immediate"))
            crashed = time.monotonic()
            await anyio.sleep(OUTAGE_BEFORE_PROMOTE)
            await anyio.to_thread.run_sync(standby.promote)
            promoted = time.monotonic()
            with anyio.fail_after(30):
                await recovered.wait()
            stop_writing.set()
    finally:
        if is_async:
            await db.async_dispose()
        else:
            db.dispose()

    rows = {n for (n,) in standby.execute("SELECT n FROM writes")}
    lost = sorted(set(run.acknowledged) - rows)
    assert run.first_new_primary_write is not None
    print(  # the figures of the closing note
        f"\nfailover {driver} {'sync' if synchronous else 'async'} replication: "
        f"statuses {dict(sorted(run.statuses.items()))}, "
        f"first write on the new primary {run.first_new_primary_write - crashed:.2f}s after "
        f"the crash ({run.first_new_primary_write - promoted:.2f}s after promotion), "
        f"{len(run.acknowledged)} acknowledged, {len(lost)} lost"
    )
    assert run.statuses.get(503, 0) > 0  # the outage was seen, and answered 503
    assert run.retry_after == {"1"}
    assert set(run.statuses) <= {200, 500, 503}
    assert run.statuses.get(500, 0) <= WRITERS  # at most the COMMITs the crash cut off
    assert run.first_new_primary_write - promoted < 5  # the pool found the new primary itself
    if synchronous:
        assert lost == []  # no acknowledged write lost


def _cut_replication(standby: Cluster) -> None:
    """Stop ``standby`` receiving WAL (as a network partition would), keeping it up."""
    standby.execute("ALTER SYSTEM SET primary_conninfo = ''")
    standby.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while standby.execute("SELECT count(*) FROM pg_stat_wal_receiver")[0][0]:
        assert time.monotonic() < deadline, "the WAL receiver did not stop"
        time.sleep(0.02)


@REPLICATION
@pytest.mark.parametrize(("driver", "is_async"), [("psycopg", False), ("asyncpg", True)])
async def test_failover_from_a_lagging_standby_loses_writes_only_without_sync_replication(
    topology: Topology, driver: str, is_async: bool, synchronous: bool
) -> None:
    """The standby stops receiving WAL, writes go on, then the primary dies: synchronous
    replication acknowledged none of the writes it could not ship; asynchronous lost them."""
    primary = topology.primary()
    standby = topology.standby(primary, synchronous=synchronous)
    primary.execute("CREATE TABLE writes (n int PRIMARY KEY)")
    standby.wait_replayed()
    url, options = _urls(primary, standby, driver), {"pool_size": 4, "max_overflow": 4}
    db = (
        DatabaseSessionManager(async_url=url, engine_options=options)
        if is_async
        else DatabaseSessionManager(url, engine_options=options)
    )
    app = build_app(db, is_async=is_async)
    acknowledged: set[int] = set()
    statuses: dict[int, int] = {}
    numbers = itertools.count()

    async def write(client: httpx.AsyncClient) -> None:
        n = next(numbers)
        response = await client.post(f"/writes/{n}")
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 200:
            acknowledged.add(n)

    async def crash_primary() -> None:
        await anyio.sleep(1)  # a synchronous COMMIT without its standby waits until then
        await anyio.to_thread.run_sync(lambda: primary.stop("immediate"))

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(10):
                await write(client)
            before_cut = set(acknowledged)
            await anyio.to_thread.run_sync(_cut_replication, standby)
            async with anyio.create_task_group() as group:
                for _ in range(WRITERS):
                    group.start_soon(write, client)
                group.start_soon(crash_primary)
            await anyio.to_thread.run_sync(standby.promote)
            for _ in range(5):
                await write(client)
    finally:
        if is_async:
            await db.async_dispose()
        else:
            db.dispose()

    rows = {n for (n,) in standby.execute("SELECT n FROM writes")}
    lost = sorted(acknowledged - rows)
    print(
        f"\nlagging standby, {driver}, {'sync' if synchronous else 'async'} replication: statuses "
        f"{dict(sorted(statuses.items()))}, {len(acknowledged)} acknowledged, {len(lost)} lost"
    )
    assert before_cut <= rows
    assert len(acknowledged) >= len(before_cut) + 5  # writes on the new primary
    if synchronous:
        assert lost == []
    else:
        assert len(lost) == WRITERS  # acknowledged on the old primary, never shipped
