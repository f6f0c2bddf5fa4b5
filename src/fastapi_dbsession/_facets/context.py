"""The manager's look-ups of the current session and its transaction hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from sqlalchemy.orm import Session

from fastapi_dbsession import _frames

from ._base import Facet

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


class ContextFacet(Facet):
    """``current_session()`` / ``current_async_session()``, ``on_commit`` / ``on_rollback``."""

    __slots__ = ()

    def current_session(self) -> Session:
        """Return the sync session of the current request or unit of work.

        Raises:
            NoActiveTransactionError: Nothing is active in this context.
        """
        return cast(Session, _frames.current_session(self._database, is_async=False))

    def current_async_session(self) -> AsyncSession:
        """Return the AsyncSession of the current request or unit of work.

        Raises:
            NoActiveTransactionError: Nothing is active in this context.
        """
        return cast("AsyncSession", _frames.current_session(self._database, is_async=True))

    def on_commit(self, callback: Callable[[], object], *, robust: bool = True) -> None:
        """Run ``callback`` after the outermost transaction of this context really commits.

        Discarded if the savepoint it was registered in rolls back. In a request, it runs after
        the commit, before the response is sent.

        Args:
            callback: A function of no arguments; an ``async def`` one is awaited.
            robust: Log a failing callback and go on (default); False lets it propagate.

        Raises:
            NoActiveTransactionError: No transaction is active in this context.

        Example:
            >>> db.on_commit(lambda: send_welcome_email(user.email))
        """
        _frames.hooks_frame(self._database, "on_commit").on_commit.append((callback, robust))

    def on_rollback(self, callback: Callable[[], object], *, robust: bool = True) -> None:
        """Run ``callback`` after the transaction of this context rolls back.

        Registered inside a savepoint, it runs when that savepoint rolls back. See
        :meth:`on_commit` for the arguments.
        """
        _frames.hooks_frame(self._database, "on_rollback").on_rollback.append((callback, robust))
