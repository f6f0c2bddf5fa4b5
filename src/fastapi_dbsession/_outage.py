"""Tell a failure to reach the database from any other failure of a request, for a fast 503.

During a failover the primary is gone and the standby does not take writes yet: every new
connection fails (refused, or "session is read-only" under ``target_session_attrs=read-write``)
and every pooled one is dead. Both are an outage, not a bug in the request, and nothing of the
request was committed: the request layer answers them with 503 and ``Retry-After``. A failed
connect arrives as :class:`DatabaseUnavailableError` (``_engines`` wraps every driver's connect);
a connection that died under a statement as SQLAlchemy's ``DBAPIError`` with
``connection_invalidated`` (the server rolled the transaction back); a server that stopped
answering as :class:`CommandTimeoutError` (``command_timeout`` closed the connection).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from . import _urls
from .errors import CommandTimeoutError, DatabaseUnavailableError


def unavailable_cause(error: BaseException | None) -> BaseException | None:
    """``error`` if it is a connect failure or a lost connection, else None.

    Only ``error`` itself counts, not what it wraps: a ``CommitOutcomeUnknownError`` (the
    connection was lost during COMMIT) is no outage to retry blindly, though a lost
    connection is its cause.
    """
    if isinstance(error, DatabaseUnavailableError | CommandTimeoutError):
        return error
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return error
    return None


def unavailable_message(cause: BaseException) -> str:
    """What the 503's error says (for logs and handlers), secrets masked."""
    if isinstance(cause, DatabaseUnavailableError | CommandTimeoutError):
        return str(cause)
    lines = _urls.mask_text(str(cause)).strip().splitlines()
    return (
        f"The connection to the database was lost during the request: "
        f"{type(cause).__name__}: {lines[0] if lines else ''}. The transaction was rolled back "
        "(the server restarted, failed over, or ended the connection); the client may retry."
    )
