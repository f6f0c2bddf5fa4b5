"""SQLAlchemy sessions for FastAPI that commit before the response and always close."""

import logging

from .decorators import CURRENT_SESSION, transactional
from .errors import (
    ConcurrentSessionUseError,
    ConfigurationError,
    ConnectionDeadlockError,
    DatabaseUnavailableError,
    DBSessionError,
    DBSessionWarning,
    MissingDriverError,
    NoActiveSessionError,
    NoActiveTransactionError,
    PoolTimeoutError,
    SessionFinishedError,
    SyncAsyncMismatchError,
    TransactionExistsError,
    UnexpectedRollbackError,
)
from .manager import DatabaseSessionManager
from .propagation import CommitPolicy, Propagation

__all__ = [
    "CURRENT_SESSION",
    "CommitPolicy",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "ConnectionDeadlockError",
    "DBSessionError",
    "DBSessionWarning",
    "DatabaseSessionManager",
    "DatabaseUnavailableError",
    "MissingDriverError",
    "NoActiveSessionError",
    "NoActiveTransactionError",
    "PoolTimeoutError",
    "Propagation",
    "SessionFinishedError",
    "SyncAsyncMismatchError",
    "TransactionExistsError",
    "UnexpectedRollbackError",
    "transactional",
]

__version__ = "0.1.0.dev0"

logging.getLogger("fastapi_dbsession").addHandler(logging.NullHandler())
