"""The manager's read-replica dependencies: ``db.read_session`` and ``db.async_read_session``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from fastapi_dbsession import dependencies

from ._base import Facet

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


class ReplicasFacet(Facet):
    """``db.read_session`` / ``db.async_read_session`` (built once: FastAPI caches by identity)."""

    __slots__ = ()

    @cached_property
    def read_session(self) -> Callable[..., Awaitable[Session]]:
        """Dependency giving a read-only ``Session``: ``Depends(db.read_session)``.

        With ``replica_urls``, it reads from a replica (the primary after this request wrote,
        or inside the client's sticky window). It never commits, and it is not the context's
        session: ``@transactional`` and ``db.transaction()`` never join it. Without replicas it
        reads from the database itself.

        Example:
            >>> @app.get("/reports/{report_id}")
            ... def report(report_id: int, session: Session = Depends(db.read_session)): ...
        """
        return dependencies.read_session_dependency(self._database)

    @cached_property
    def async_read_session(self) -> Callable[..., Awaitable[AsyncSession]]:
        """Async twin of :attr:`read_session`: ``Depends(db.async_read_session)``."""
        return dependencies.async_read_session_dependency(self._database)
