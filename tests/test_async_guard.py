"""The AsyncSession guard: one task at a time inside an operation, a clear error otherwise.

The guard sits on the sync session methods that every ``AsyncSession`` operation runs in its
greenlet, so each way in (``execute``, ``scalars``, ``get``, ``run_sync``, ...) must trip it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_dbsession import ConcurrentSessionUseError, DatabaseSessionManager
from tests.conftest import Backend, PoolWatch
from tests.models import Item

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

Operation = Callable[[AsyncSession], Awaitable[Any]]

OPERATIONS: dict[str, Operation] = {
    "execute": lambda session: session.execute(text("SELECT 1")),
    "scalar": lambda session: session.scalar(text("SELECT 1")),
    "scalars": lambda session: session.scalars(select(Item)),
    "get": lambda session: session.get(Item, 987654),  # not in the identity map: a SELECT
    "run_sync": lambda session: session.run_sync(
        lambda sync_session: sync_session.execute(text("SELECT 1"))
    ),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_sharing_a_session_across_tasks_fails_clearly(
    backend: Backend, operation: str, anyio_backend: str
) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    watch = PoolWatch(db.async_engine)
    run = OPERATIONS[operation]
    try:
        async with db.async_transaction() as session:
            session.add(Item(name="kept"))
            await session.flush()
            with pytest.raises(ConcurrentSessionUseError) as caught:
                await asyncio.gather(run(session), run(session))
        # The block ended normally: it waited for the task still inside its statement, then
        # committed the row and gave the connection back.
        assert backend.names() == ["kept"]
        assert watch.out == 0
        message = str(caught.value)
        assert "one task at a time" in message
        assert "while another task" in message
    finally:
        await db.async_dispose()


async def test_one_task_after_another_is_fine(backend: Backend, anyio_backend: str) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    try:
        async with db.async_transaction() as session:
            for name in ("a", "b"):
                await asyncio.create_task(_add(session, name))  # one task at a time: allowed
            assert (await session.scalars(select(Item.name).order_by(Item.name))).all() == [
                "a",
                "b",
            ]
        assert backend.names() == ["a", "b"]
    finally:
        await db.async_dispose()


async def _add(session: AsyncSession, name: str) -> None:
    session.add(Item(name=name))
    await session.flush()
