"""An app whose ``/hold/{side}`` keeps its request's connection until released.

Pool-pressure tests (tests/test_capacity.py, tests/test_given_engines.py,
tests/test_pool_pressure.py) hold the only connection of a pool of one with it, then watch
what ``/{side}``, which needs a connection too, gets.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager


def holding_app(
    db: DatabaseSessionManager, *, sides: tuple[str, ...] = ("sync", "async")
) -> tuple[FastAPI, threading.Event, threading.Event]:
    """The app, the event ``/hold/{side}`` sets once it holds a connection, and the one that
    lets it go."""
    app = FastAPI(lifespan=db.lifespan)
    holding, release = threading.Event(), threading.Event()

    @app.get("/hold/sync")
    def hold(session: Session = Depends(db.session)) -> None:
        session.execute(text("SELECT 1"))
        holding.set()
        release.wait(10)

    @app.get("/sync")
    def next_request(session: Session = Depends(db.session)) -> int:
        return int(session.execute(text("SELECT 1")).scalar_one())

    if "async" in sides:

        @app.get("/hold/async")
        async def ahold(session: AsyncSession = Depends(db.async_session)) -> None:
            await session.execute(text("SELECT 1"))
            holding.set()
            await asyncio.to_thread(release.wait, 10)

        @app.get("/async")
        async def anext_request(session: AsyncSession = Depends(db.async_session)) -> int:
            return int((await session.execute(text("SELECT 1"))).scalar_one())

    return app, holding, release


@contextmanager
def held(
    client: TestClient, side: str, holding: threading.Event, release: threading.Event
) -> Iterator[None]:
    """While inside, ``/hold/{side}`` holds its connection; on the way out it lets it go."""
    holder = threading.Thread(target=client.get, args=(f"/hold/{side}",))
    holder.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        holder.join(10)
