"""The pool-capacity gate: waiting on the event loop, timeouts, cancellation, many loops."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from fastapi_dbsession._capacity import CapacityGate
from tests.conftest import Backend
from tests.holding import held, holding_app
from tests.models import Base, Item


def gate(capacity: int = 1) -> CapacityGate:
    return CapacityGate(capacity, 1.0, "full")


def test_permits_up_to_capacity_then_waiters_are_served_in_order() -> None:
    async def scenario() -> list[str]:
        capacity_gate = gate(2)
        order: list[str] = []
        assert await capacity_gate.acquire(1)
        assert await capacity_gate.acquire(1)

        async def wait(name: str) -> None:
            assert await capacity_gate.acquire(1)
            order.append(name)

        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)  # both tasks have queued (acquire queues before it awaits)
        assert order == []
        capacity_gate.release()
        await first
        capacity_gate.release()
        await second
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_timeout_returns_false_and_leaves_no_waiter() -> None:
    async def scenario() -> None:
        capacity_gate = gate(1)
        assert await capacity_gate.acquire(1)
        assert await capacity_gate.acquire(0.05) is False  # (a hang fails via pytest-timeout)
        capacity_gate.release()
        assert await capacity_gate.acquire(0.05)  # the permit was not lost to a dead waiter

    asyncio.run(scenario())


def test_cancelled_waiter_passes_its_permit_on() -> None:
    async def scenario() -> None:
        capacity_gate = gate(1)
        assert await capacity_gate.acquire(1)
        doomed = asyncio.create_task(capacity_gate.acquire(5))
        await asyncio.sleep(0)  # `doomed` is queued
        capacity_gate.release()  # granted to `doomed`...
        doomed.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert await capacity_gate.acquire(0.1)  # the permit came back

    asyncio.run(scenario())


def test_release_from_another_thread_wakes_a_waiter_on_its_loop() -> None:
    capacity_gate = gate(1)
    asyncio.run(capacity_gate.acquire(1))  # held by a loop that is gone now

    async def wait() -> bool:
        timer = threading.Timer(0.05, capacity_gate.release)
        timer.start()
        return await capacity_gate.acquire(2)

    assert asyncio.run(wait())


def test_waiting_longer_than_pool_timeout_answers_503(backend: Backend) -> None:
    db = DatabaseSessionManager(
        backend.url, engine_options={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.3}
    )
    app, holding, release = holding_app(db, sides=("sync",))
    with TestClient(app) as client:
        with held(client, "sync", holding, release):
            busy = client.get("/sync")
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
        assert client.get("/sync").status_code == 200  # capacity is back


def _holding_app(
    db: DatabaseSessionManager, order: list[str], holding: threading.Event, release: threading.Event
) -> FastAPI:
    """``/held`` writes, holds its session until ``release``, then fails (rolls back);
    ``/other`` counts the committed rows."""
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/held")
    def held(session: Session = Depends(db.session)) -> None:
        session.add(Item(name="held"))
        session.flush()
        holding.set()
        assert release.wait(10)
        order.append("held ends")
        raise HTTPException(409, "rolled back")

    @app.get("/other")
    def other(session: Session = Depends(db.session)) -> int:
        order.append("other runs")
        return int(session.scalar(select(func.count()).select_from(Item)) or 0)

    return app


def test_in_memory_sqlite_serves_one_request_at_a_time() -> None:
    """In-memory SQLite is one connection (StaticPool): the gate has one permit, so a second
    request waits for the first to finish instead of running inside its transaction. The
    connection is created on this thread and used by the threadpool's workers, which the
    library's check_same_thread=False default allows (sqlite3 refuses it otherwise)."""
    db = DatabaseSessionManager("sqlite://")
    Base.metadata.create_all(db.engine)  # on this thread: the requests run in worker threads
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()
    app = _holding_app(db, order, holding, release)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/held")
        assert holding.wait(10)
        second = pool.submit(client.get, "/other")
        # ungated, /other would run now, on the connection /held is using: give it the chance
        assert not release.wait(0.3)
        release.set()
        assert first.result(10).status_code == 409
        assert second.result(10).json() == 0  # it saw no trace of the rolled-back write

    assert order == ["held ends", "other runs"]
    db.dispose()


def test_an_unbounded_pool_has_no_gate(backend: Backend) -> None:
    """max_overflow=-1: the pool hands out as many connections as asked, so requests never
    wait for a permit. A gate sized like pool_size (1 here) would make /other time out."""
    db = DatabaseSessionManager(
        backend.url, engine_options={"pool_size": 1, "max_overflow": -1, "pool_timeout": 0.5}
    )
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()
    app = _holding_app(db, order, holding, release)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/held")
        assert holding.wait(10)
        try:
            assert client.get("/other").json() == 0  # while /held still holds its connection
        finally:
            release.set()
        assert first.result(10).status_code == 409

    assert order == ["other runs", "held ends"]
    db.dispose()
