"""Tell a failed COMMIT whose outcome is unknown (the connection died) from an ordinary one.

A ``COMMIT`` that fails with an error from the server (a deferred constraint, a serialization
failure) rolled back. One that fails because the connection was lost (SQLAlchemy invalidated
it, or ``command_timeout`` closed it) may have committed on the server before the answer was
lost: :func:`unknown_commit_outcome` turns that into :class:`CommitOutcomeUnknownError`,
logged at ERROR. A ``ROLLBACK`` that fails because the connection was lost needs nothing
more: the server ends the transaction with its connection (:func:`rollback`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import SessionTransaction

from ._urls import mask_text
from .errors import CommandTimeoutError, CommitOutcomeUnknownError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger("fastapi_dbsession")


def connection_lost(error: BaseException) -> bool:
    """Tell whether ``error`` (or what it was raised from) says the connection was lost."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CommandTimeoutError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def unknown_commit_outcome(error: BaseException) -> CommitOutcomeUnknownError | None:
    """The error to raise for a ``COMMIT`` that failed with ``error``, or None: re-raise it."""
    if not isinstance(error, Exception) or not connection_lost(error):
        return None
    logger.error(
        "commit outcome unknown: the connection was lost during COMMIT (%s: %s); the "
        "transaction may or may not have been committed",
        type(error).__name__,
        mask_text(str(error).partition("\n")[0]),
    )
    return CommitOutcomeUnknownError(
        "The connection to the database was lost while COMMIT ran "
        f"({type(error).__name__}), so nobody can tell whether the transaction was committed: "
        "the server may have committed it and died before answering. It is not retried. "
        "Check whether the data is there before writing it again, or make the write "
        "idempotent (an idempotency key with a unique constraint) so that the client can "
        "safely retry the request. See the Guarantees page of the documentation."
    )


def commit(target: Session | SessionTransaction) -> None:
    """Commit a session's transaction (or release a savepoint); a lost connection is unknown.

    Raises:
        CommitOutcomeUnknownError: The connection was lost while a session's COMMIT ran.
    """
    if isinstance(target, SessionTransaction):  # a savepoint: its outer transaction decides
        target.commit()
        return
    try:
        target.commit()
    except Exception as exc:
        unknown = unknown_commit_outcome(exc)
        if unknown is None:
            raise
        raise unknown from exc


def rollback(target: Session | SessionTransaction) -> None:
    """Roll back; a connection lost meanwhile is no error: the server rolled back with it."""
    try:
        target.rollback()
    except Exception as exc:
        if not connection_lost(exc):
            raise
        logger.debug("rollback on a lost connection (the server rolled back): %r", exc)
