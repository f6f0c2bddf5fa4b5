"""Tell a database that cannot be reached from a failing statement, for a fast 503.

During a failover the primary is gone and the standby does not take writes yet: every new
connection fails (refused, or "session is read-only" under ``target_session_attrs=read-write``)
and every pooled one is dead. Both are an outage, not a bug in the request:

- :func:`install` makes a failed connect raise :class:`DatabaseUnavailableError` (the driver's
  error chained), whatever the driver: psycopg's arrives as SQLAlchemy's ``OperationalError``,
  asyncpg's as a bare ``OSError`` or asyncpg exception. It wraps the engine's own dialect's
  ``connect`` (looked up on the dialect at each connect, after the ``do_connect`` event
  listeners ran, so a listener that edits the connect arguments still works);
- :func:`unavailable_cause` tells whether an exception raised in a request means the database
  could not be used at all: a failed connect, or a connection that died under a statement
  (SQLAlchemy's ``connection_invalidated``: the server rolled the transaction back). The
  request layer answers those with 503 and ``Retry-After``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from . import _urls
from .errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def install(engine: Engine) -> None:
    """Make every failed connect of ``engine`` raise :class:`DatabaseUnavailableError`."""
    dialect = engine.dialect
    connect = dialect.connect
    shown = _urls.render(engine.url)

    def connect_or_unavailable(*cargs: Any, **cparams: Any) -> Any:
        try:
            return connect(*cargs, **cparams)
        except Exception as exc:
            raise connect_failed(shown, exc) from exc

    dialect.connect = connect_or_unavailable  # type: ignore[method-assign]


def connect_failed(shown: str, exc: BaseException) -> DatabaseUnavailableError:
    """The error for a connect to ``shown`` (a masked URL) that failed with ``exc``."""
    reason = _urls.mask_text(str(exc)).strip().splitlines()
    return DatabaseUnavailableError(
        f"Cannot connect to the database at {shown}: {type(exc).__name__}: "
        f"{reason[0] if reason else ''}. The server is down, restarting or failing over (with "
        "target_session_attrs=read-write: no host takes writes yet), or the URL is wrong."
    )


def unavailable_cause(error: BaseException | None) -> BaseException | None:
    """The connect failure or lost connection behind ``error``, or None for anything else."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DatabaseUnavailableError):
            return error
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return error
        error = error.__cause__
    return None
