"""SQLAlchemy sessions for FastAPI that commit before the response and always close."""

import logging
from typing import TYPE_CHECKING

from ._pressure import PoolStatus
from ._probes import PingResult
from ._replicas import StickyWindow
from .decorators import CURRENT_SESSION, transactional
from .errors import (
    CommandTimeoutError,
    CommitOutcomeUnknownError,
    ConcurrentSessionUseError,
    ConfigurationError,
    ConnectionDeadlockError,
    DatabaseUnavailableError,
    DBSessionError,
    DBSessionWarning,
    MissingDriverError,
    NoActiveSessionError,
    NoActiveTransactionError,
    PartialCommitError,
    PoolTimeoutError,
    SessionFinishedError,
    SyncAsyncMismatchError,
    TransactionExistsError,
    UnexpectedRollbackError,
)
from .lifespans import compose_lifespans
from .manager import DatabaseSessionManager
from .middleware import ServerTimingMiddleware
from .propagation import CommitPolicy, Propagation

if TYPE_CHECKING:  # imported on first use below: it needs the [settings] extra
    from .settings import DatabaseSettings

__all__ = [
    "CURRENT_SESSION",
    "CommandTimeoutError",
    "CommitOutcomeUnknownError",
    "CommitPolicy",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "ConnectionDeadlockError",
    "DBSessionError",
    "DBSessionWarning",
    "DatabaseSessionManager",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "MissingDriverError",
    "NoActiveSessionError",
    "NoActiveTransactionError",
    "PartialCommitError",
    "PingResult",
    "PoolStatus",
    "PoolTimeoutError",
    "Propagation",
    "ServerTimingMiddleware",
    "SessionFinishedError",
    "StickyWindow",
    "SyncAsyncMismatchError",
    "TransactionExistsError",
    "UnexpectedRollbackError",
    "compose_lifespans",
    "transactional",
]

__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> object:
    """Import ``DatabaseSettings`` on first use: only it needs pydantic-settings."""
    if name == "DatabaseSettings":
        from .settings import DatabaseSettings

        return DatabaseSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logging.getLogger("fastapi_dbsession").addHandler(logging.NullHandler())
