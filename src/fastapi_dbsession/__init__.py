"""SQLAlchemy sessions for FastAPI that commit before the response and always close."""

import logging

from ._pressure import PoolStatus
from ._probes import PingResult
from .decorators import CURRENT_SESSION, transactional
from .errors import (
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
    PoolTimeoutError,
    SessionFinishedError,
    TransactionExistsError,
    UnexpectedRollbackError,
)
from .manager import DatabaseSessionManager
from .middleware import ServerTimingMiddleware
from .propagation import CommitPolicy, Propagation

__all__ = [
    "CURRENT_SESSION",
    "CommitOutcomeUnknownError",
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
    "PingResult",
    "PoolStatus",
    "PoolTimeoutError",
    "Propagation",
    "ServerTimingMiddleware",
    "SessionFinishedError",
    "TransactionExistsError",
    "UnexpectedRollbackError",
    "transactional",
]

__version__ = "0.1.0.dev0"

logging.getLogger("fastapi_dbsession").addHandler(logging.NullHandler())
