"""Bind every session a manager opens to one outer transaction, rolled back after the test.

While a binding is active, the manager's session factories (request sessions,
``db.transaction()``, ``@transactional`` including ``REQUIRES_NEW`` and ``NESTED``) return
sessions bound to one connection per side with ``join_transaction_mode="create_savepoint"``:
the application's ``commit()`` releases a SAVEPOINT, its ``rollback()`` rolls back to one, and
the outer transaction, never committed, is rolled back when the test ends.

The async side keeps one outer connection per event loop, created on first use in that loop
(TestClient runs the app on a loop of its own; pytest-asyncio and anyio run the test on
another), and rolled back on the loop that owns it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from fastapi_dbsession._binds import bind_key_of
from fastapi_dbsession._engines import lacks_explicit_begin
from fastapi_dbsession._sessions import BINDS
from fastapi_dbsession.errors import ConfigurationError

from ._seam import database_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, RootTransaction
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncTransaction
    from sqlalchemy.orm import Session

    from fastapi_dbsession.manager import DatabaseSessionManager

logger = logging.getLogger(__name__)


class TestBinding:
    """The outer transactions of one test, for one manager.

    It is the :class:`~fastapi_dbsession._database.Binding` that ``isolated()`` attaches to the
    manager: while attached, every session the manager opens comes from here.
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, manager: DatabaseSessionManager) -> None:
        self.manager = manager
        self._database = database_of(manager)
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None
        self._async: dict[asyncio.AbstractEventLoop, tuple[AsyncConnection, AsyncTransaction]] = {}
        self._guards: list[AsyncGenerator[None, None]] = []

    def session(self) -> Session:
        """A sync session inside the test's outer transaction."""
        if self._connection is None:
            self._connection = self._database.engine.connect()
            self._transaction = self._connection.begin()
            if lacks_explicit_begin(self._database.engine):
                self._connection.exec_driver_sql("BEGIN")  # else RELEASE SAVEPOINT commits
        session = self._database.session_factory(
            bind=self._connection, join_transaction_mode="create_savepoint"
        )
        self._refuse_binds(session)
        return session

    async def async_session(self) -> AsyncSession:
        """An AsyncSession inside the outer transaction of the running event loop."""
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            connection = await self._database.async_engine.connect()
            entry = (connection, await connection.begin())
            if lacks_explicit_begin(self._database.async_engine.sync_engine):
                await connection.exec_driver_sql("BEGIN")
            self._async[loop] = entry
            guard = self._close_at_loop_shutdown()
            await guard.__anext__()  # the loop now finalizes it in shutdown_asyncgens()
            self._guards.append(guard)
        session = self._database.async_session_factory(
            bind=entry[0], join_transaction_mode="create_savepoint"
        )
        self._refuse_binds(session.sync_session)
        return session

    def _refuse_binds(self, session: Session) -> None:
        """The outer transaction covers the manager's own database only: a bound model would
        be written to it (or outside the test), so its statements are refused."""
        if self._database.config.binds:
            session.info[BINDS] = _refuse_bound

    async def _close_at_loop_shutdown(self) -> AsyncGenerator[None, None]:
        """Roll this loop's connection back while the loop can still run it.

        ``asyncio.run()``, pytest-asyncio and anyio close their loops with
        ``shutdown_asyncgens()`` first, which finalizes this generator on the loop.
        """
        try:
            yield
        finally:
            await self.async_close_loop()

    async def async_close_loop(self) -> None:
        """Roll back and close the outer connection of the running loop (before it closes)."""
        entry = self._async.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await _aclose(entry[0])

    def close(self) -> None:
        """Roll everything back: the sync connection and every loop's async connection."""
        if self._connection is not None:
            if self._transaction is not None and self._transaction.is_active:
                self._transaction.rollback()
            self._connection.close()
            self._connection = self._transaction = None
        self._guards.clear()
        for loop, (connection, _) in list(self._async.items()):
            del self._async[loop]
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(_aclose(connection))
            else:  # the loop is gone: drop the connection; the server rolls back
                _terminate(connection)


async def _aclose(connection: AsyncConnection) -> None:
    """Roll back, and keep the connection out of the pool: it belongs to this loop only."""
    await connection.rollback()
    await connection.invalidate()
    await connection.close()


def _terminate(connection: Any) -> None:
    try:
        connection.sync_connection.invalidate()
    except Exception as exc:  # a dead loop's driver may refuse even that
        logger.debug("could not invalidate a test connection of a closed loop: %r", exc)


def _refuse_bound(mapper: Any, clause: Any) -> None:
    key = bind_key_of(mapper, clause)
    if key is not None:
        raise ConfigurationError(
            f"isolated() (and the db_isolation fixture) wraps only the manager's own database "
            f"in the test's outer transaction, not its binds: a statement on bind {key!r} is "
            "refused rather than written outside it. Test bound models without isolation "
            "(create and drop their tables in a fixture), or point the test at a manager "
            "without binds."
        )
