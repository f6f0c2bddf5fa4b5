"""Reach the ``Database`` behind a manager: the testing package's one seam into the library.

The pytest plugin and the helpers need what users never do: make every new session come from
a test's binding, open a session bound to the test's connection, re-point the engines at a test
database. Those live on the manager's :class:`~fastapi_dbsession._database.Database`; this
function is the only place that reaches it (docs/architecture.md, "The testing seam").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi_dbsession._database import Database
    from fastapi_dbsession.manager import DatabaseSessionManager


def database_of(db: DatabaseSessionManager) -> Database:
    """The ``Database`` that ``db`` delegates to."""
    return db._database  # noqa: SLF001  # the testing seam
