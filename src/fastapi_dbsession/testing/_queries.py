"""Count the SQL statements a block issues: catch N+1 queries in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from fastapi_dbsession.manager import DatabaseSessionManager

# Transaction control is the library's bookkeeping, not the application's queries.
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET ", "PRAGMA", "SHOW ")


@dataclass
class QueryCount:
    """The statements seen so far: ``len(count)``, ``count.statements``."""

    statements: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.statements)

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def count_queries(db: DatabaseSessionManager) -> Iterator[QueryCount]:
    """Count the statements ``db``'s engines (sync and async) execute inside the block.

    Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, SET, PRAGMA) is not
    counted. Engines that do not exist yet are created, so the count covers them.

    Example:
        >>> with count_queries(db) as queries:
        ...     client.get("/orders")
        >>> assert len(queries) <= 2, queries.statements
    """
    found = QueryCount()

    def record(conn: Any, cursor: Any, statement: str, *args: object) -> None:
        if not statement.lstrip().upper().startswith(_CONTROL):
            found.statements.append(statement)

    engines: list[Engine] = []
    if db.url is not None:
        engines.append(db.engine)
    if db.async_url is not None and _has_greenlet():
        engines.append(db.async_engine.sync_engine)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield found
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


@contextmanager
def assert_max_queries(db: DatabaseSessionManager, limit: int) -> Iterator[QueryCount]:
    """Fail if the block issues more than ``limit`` statements, listing them.

    Example:
        >>> with assert_max_queries(db, 2):
        ...     client.get("/orders")   # an N+1 loop would fail here
    """
    with count_queries(db) as found:
        yield found
    if len(found) > limit:
        listing = "\n".join(f"  {n}. {sql.strip()}" for n, sql in enumerate(found.statements, 1))
        raise AssertionError(
            f"expected at most {limit} SQL statements, {len(found)} were executed:\n{listing}"
        )


def _has_greenlet() -> bool:
    try:
        import greenlet  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True
