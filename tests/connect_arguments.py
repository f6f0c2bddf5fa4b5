"""What a driver's ``connect()`` gets from a manager: SQLAlchemy's ``do_connect`` event shows
it, and the connect is stopped there, so no server is needed."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from sqlalchemy import event

from fastapi_dbsession import DatabaseSessionManager


class _Stop(Exception):
    """Raised instead of connecting, once the driver's arguments are seen."""


def driver_arguments(db: DatabaseSessionManager, *, side: str) -> dict[str, Any]:
    """The keyword arguments ``side``'s ("sync" or "async") driver ``connect()`` would get."""
    engine = db.async_engine.sync_engine if side == "async" else db.engine
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect: object, record: object, cargs: object, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _Stop

    async def connect_async() -> None:
        try:
            async with db.async_engine.connect():
                pass
        finally:
            await db.async_dispose()

    with pytest.raises(_Stop):
        if side == "async":
            anyio.run(connect_async)
        else:
            with db.engine.connect():
                pass
    db.dispose()
    return seen
