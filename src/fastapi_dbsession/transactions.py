"""Run units of work outside requests: ``db.transaction()`` and ``db.async_transaction()``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

from anyio import CancelScope

from ._sessions import afinish_session, finish_session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from .manager import DatabaseSessionManager

ENDED_MESSAGE = (
    "This session belonged to a db.transaction() block that has ended (committed or rolled "
    "back, then closed). Keep using the session only inside its block, or open a new one: "
    '"with db.transaction() as session:" / "async with db.async_transaction() as session:".'
)


@contextmanager
def transaction(manager: DatabaseSessionManager) -> Iterator[Session]:
    """Open a session; commit when the block ends, roll back on any exception, always close."""
    session = manager._session_factory()
    token = manager._sync_current.set(session)
    try:
        try:
            yield session
        except BaseException:
            finish_session(session, False, ENDED_MESSAGE)
            raise
        finish_session(session, True, ENDED_MESSAGE)
    finally:
        manager._sync_current.reset(token)


@asynccontextmanager
async def async_transaction(manager: DatabaseSessionManager) -> AsyncIterator[AsyncSession]:
    """Async twin of :func:`transaction`."""
    session = manager._async_session_factory()
    token = manager._async_current.set(session)
    try:
        try:
            yield session
        except BaseException:
            with CancelScope(shield=True):  # a cancelled task still rolls back and closes
                await afinish_session(session, False, ENDED_MESSAGE)
            raise
        with CancelScope(shield=True):
            await afinish_session(session, True, ENDED_MESSAGE)
    finally:
        manager._async_current.reset(token)
