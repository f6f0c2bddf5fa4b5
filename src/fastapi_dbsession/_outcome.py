"""Tell what a failed COMMIT left behind: nothing, an unknown outcome, or a partial commit.

A ``COMMIT`` that fails with an error from the server (a deferred constraint, a serialization
failure) rolled back. One that fails because the connection was lost (SQLAlchemy invalidated
it, or ``command_timeout`` closed it) may have committed on the server before the answer was
lost: :func:`unknown_commit_outcome` turns that into :class:`CommitOutcomeUnknownError`,
logged at ERROR. One that fails after another database of the same request committed is a
partial commit: :func:`partial_commit` builds its :class:`PartialCommitError`, logged at
ERROR. A ``ROLLBACK`` that fails because the connection was lost needs nothing more: the
server ends the transaction with its connection (:func:`rollback`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import SessionTransaction

from ._urls import mask_text
from .errors import CommandTimeoutError, CommitOutcomeUnknownError, PartialCommitError

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


def partial_commit(
    committed: Sequence[tuple[str, str]],
    failed: tuple[str, str],
    error: BaseException,
    *,
    rolled_back: Sequence[str],
    advice: str,
) -> PartialCommitError:
    """The error for a commit that failed after other databases committed; logged at ERROR.

    Args:
        committed: Each committed database's name (``error.committed``) and how to show it.
        failed: The failed database's name (``error.failed``) and how to show it.
        error: The failed commit's error (its message is shown with passwords masked).
        rolled_back: How to show the databases rolled back after the failure.
        advice: What to do about it.
    """
    reason = mask_text(str(error)).strip().splitlines()
    shown = ", ".join(label for _, label in committed)
    outcome = ""
    if connection_lost(error):
        outcome = f" The connection was lost during that COMMIT: {failed[1]} may have committed."
    after = f" {', '.join(rolled_back)} rolled back." if rolled_back else ""
    message = (
        f"Half of this request's work was committed: {shown} committed, then the commit on "
        f"{failed[1]} failed ({type(error).__name__}: {reason[0] if reason else ''}).{outcome}"
        f"{after} {advice}"
    )
    logger.error("partial commit: %s", message)
    names = tuple(name for name, _ in committed)
    return PartialCommitError(message, committed=names, failed=failed[0])


def rollback(target: Session | SessionTransaction) -> None:
    """Roll back; a connection lost meanwhile is no error: the server rolled back with it."""
    try:
        target.rollback()
    except Exception as exc:
        if not connection_lost(exc):
            raise
        logger.debug("rollback on a lost connection (the server rolled back): %r", exc)
