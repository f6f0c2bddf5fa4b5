"""The pool-capacity gate: waiting on the event loop, timeouts, cancellation, many loops."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from fastapi_dbsession._capacity import CapacityGate
from tests.conftest import Backend


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
        await asyncio.sleep(0.01)
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
        started = time.monotonic()
        assert await capacity_gate.acquire(0.05) is False
        assert time.monotonic() - started < 1
        capacity_gate.release()
        assert await capacity_gate.acquire(0.05)  # the permit was not lost to a dead waiter

    asyncio.run(scenario())


def test_cancelled_waiter_passes_its_permit_on() -> None:
    async def scenario() -> None:
        capacity_gate = gate(1)
        assert await capacity_gate.acquire(1)
        doomed = asyncio.create_task(capacity_gate.acquire(5))
        await asyncio.sleep(0.01)
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
    app = FastAPI(lifespan=db.lifespan)
    holding = threading.Event()
    release = threading.Event()

    @app.get("/hold")
    def hold(session: Session = Depends(db.session)) -> None:
        session.execute(text("SELECT 1"))
        holding.set()
        release.wait(10)

    @app.get("/next")
    def next_request(session: Session = Depends(db.session)) -> None:
        session.execute(text("SELECT 1"))

    with TestClient(app) as client:
        holder = threading.Thread(target=client.get, args=("/hold",))
        holder.start()
        assert holding.wait(10)
        busy = client.get("/next")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        release.set()
        holder.join(10)
        assert client.get("/next").status_code == 200  # capacity is back
