"""Run a block with every session of a manager inside one outer transaction, rolled back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._binding import TestBinding
from ._seam import database_of

if TYPE_CHECKING:
    from fastapi_dbsession.manager import DatabaseSessionManager


@contextmanager
def isolated(db: DatabaseSessionManager) -> Iterator[TestBinding]:
    """Bind ``db`` to an outer transaction for the block; roll it all back afterwards.

    Every session ``db`` opens meanwhile (request sessions, ``db.transaction()``,
    ``@transactional`` with any propagation) joins the outer transaction through a SAVEPOINT,
    so the application's own ``commit()`` calls are undone too. ``isolation_level``,
    ``read_only`` and ``timeout`` are not applied inside it.

    Raises:
        ConfigurationError: ``db`` is already isolated (nested use).

    Example:
        >>> with isolated(db):
        ...     client.post("/items", json={"name": "ada"})   # committed by the app...
        >>> # ...and gone now.
    """
    database = database_of(db)
    binding = TestBinding(db)
    database.bind(binding)  # raises if an enclosing isolated() is active
    try:
        yield binding
    finally:
        database.unbind()
        binding.close()


def override_dependency(
    app: Any, dependency: Callable[..., Any], db: DatabaseSessionManager, *, is_async: bool = False
) -> None:
    """Make an app that wires sessions by hand use ``db``'s request sessions in tests.

    ``app.dependency_overrides[get_db] = db.session`` (or ``db.async_session``): the app's own
    ``get_db`` is replaced by the library's request session, which commits before the response
    and, under ``isolated(db)`` / the ``db_isolation`` fixture, joins the test's transaction.
    ``db`` must point at the same database as the app's engine.

    Example:
        >>> override_dependency(app, get_db, DatabaseSessionManager(str(engine.url)))
    """
    app.dependency_overrides[dependency] = db.async_session if is_async else db.session
