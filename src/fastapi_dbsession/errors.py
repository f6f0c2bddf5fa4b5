"""Name every error the library raises.

Every exception derives from :class:`DBSessionError`, and each message says what went wrong,
the likely cause and the fix. No message contains a database password.

```
DBSessionError
├── ConfigurationError(DBSessionError, ValueError)        bad URL, option, policy
│   ├── MissingDriverError(ConfigurationError, ImportError)  driver or greenlet not installed
│   └── SyncAsyncMismatchError(ConfigurationError, TypeError)  sync API in async code, or back
├── DatabaseUnavailableError(DBSessionError, ConnectionError)  startup check or a connect failed
├── PoolTimeoutError(DBSessionError, TimeoutError)        no connection became free in time
├── CommandTimeoutError(DBSessionError, TimeoutError)     the database stopped answering
├── CommitOutcomeUnknownError(DBSessionError, RuntimeError)  connection lost during COMMIT
├── PartialCommitError(DBSessionError, RuntimeError)      one database committed, another failed
├── SessionFinishedError(DBSessionError, RuntimeError)    request session used after it ended
├── ConcurrentSessionUseError(DBSessionError, RuntimeError)  one AsyncSession, two tasks
├── NoActiveTransactionError(DBSessionError, RuntimeError)  nothing in scope (MANDATORY, ...)
│   (also importable as NoActiveSessionError)
├── TransactionExistsError(DBSessionError, RuntimeError)  NEVER / durable=True inside one
├── UnexpectedRollbackError(DBSessionError, RuntimeError)  commit of a rollback-only transaction
└── ConnectionDeadlockError(DBSessionError, RuntimeError)  REQUIRES_NEW with no connection left

DBSessionWarning(UserWarning)                              misuse that still works
```
"""

from __future__ import annotations

__all__ = [
    "CommandTimeoutError",
    "CommitOutcomeUnknownError",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "ConnectionDeadlockError",
    "DBSessionError",
    "DBSessionWarning",
    "DatabaseUnavailableError",
    "MissingDriverError",
    "NoActiveSessionError",
    "NoActiveTransactionError",
    "PartialCommitError",
    "PoolTimeoutError",
    "SessionFinishedError",
    "SyncAsyncMismatchError",
    "TransactionExistsError",
    "UnexpectedRollbackError",
]


class DBSessionError(Exception):
    """Base class of every exception raised by fastapi-dbsession."""


class ConfigurationError(DBSessionError, ValueError):
    """The manager was given a URL, option or policy it cannot use."""


class MissingDriverError(ConfigurationError, ImportError):
    """A database driver (or greenlet, for async) is not installed.

    The message names the extra to install, e.g. ``pip install "fastapi-dbsession[postgres]"``.
    """


class SyncAsyncMismatchError(ConfigurationError, TypeError):
    """The sync API was used where the async one belongs, or the reverse.

    ``with db.async_transaction()``, ``async with db.transaction()``, an ``async def`` unit of
    work whose session parameter is annotated ``Session``, a ``def`` endpoint that depends on
    ``db.async_session``. The message names the twin to use.
    """


class DatabaseUnavailableError(DBSessionError, ConnectionError):
    """The database could not be reached: the startup check, or a new connection, failed.

    A request session whose endpoint failed with it (a failover, a restart) is answered 503
    with ``Retry-After``. The driver's own error is chained (``__cause__``).
    """


class PoolTimeoutError(DBSessionError, TimeoutError):
    """A request waited longer than the pool timeout for a free connection."""


class CommandTimeoutError(DBSessionError, TimeoutError):
    """The database did not answer one command within ``command_timeout`` seconds.

    The connection was closed and discarded (never returned to the pool); what the command
    did on the server is rolled back with it, unless the command was ``COMMIT`` (then
    :class:`CommitOutcomeUnknownError` is raised instead, with this error as its cause).
    """


class CommitOutcomeUnknownError(DBSessionError, RuntimeError):
    """The connection was lost while ``COMMIT`` ran: the transaction may or may not be durable.

    The server may have committed and died before answering, or never received the
    ``COMMIT``. No client can tell (CockroachDB calls it an *ambiguous commit*, SQLSTATE
    40003). ``@transactional(retries=...)`` never re-runs such a unit: re-running a commit
    that did happen would apply it twice. Make the write idempotent (an idempotency key under
    a unique constraint) and let the client retry the request; see docs/guarantees.md.
    """


class SessionFinishedError(DBSessionError, RuntimeError):
    """A request session was used after its request transaction had finished."""


class ConcurrentSessionUseError(DBSessionError, RuntimeError):
    """Two tasks used one ``AsyncSession`` at the same time."""


class NoActiveTransactionError(DBSessionError, RuntimeError):
    """No request session or transaction is active in the current context."""


NoActiveSessionError = NoActiveTransactionError
"""Alias of :class:`NoActiveTransactionError`, raised by ``db.current_session()``."""


class TransactionExistsError(DBSessionError, RuntimeError):
    """A unit that must run outside any transaction (NEVER, ``durable=True``) runs inside one."""


class UnexpectedRollbackError(DBSessionError, RuntimeError):
    """The transaction was marked rollback-only by a failed inner unit, so it rolled back.

    Spring's ``UnexpectedRollbackException``: an inner ``REQUIRED`` unit raised, its caller
    swallowed the exception, and the outer unit tried to commit.
    """


class ConnectionDeadlockError(DBSessionError, RuntimeError):
    """A ``REQUIRES_NEW`` unit needs a connection its own context already holds the last of."""


class DBSessionWarning(UserWarning):
    """Misuse that still works, such as an option the database cannot enforce."""


class PartialCommitError(DBSessionError, RuntimeError):
    """A request wrote to several databases; one committed, then another's commit failed.

    Attributes:
        committed: The names (``name=``) of the managers whose transaction committed.
        failed: The name of the manager whose commit failed.
    """

    def __init__(self, message: str, *, committed: tuple[str, ...], failed: str) -> None:
        super().__init__(message)
        self.committed = committed
        self.failed = failed
