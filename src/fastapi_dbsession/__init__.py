"""SQLAlchemy sessions for FastAPI that commit before the response and always close."""

import logging

from .dependencies import CommitPolicy
from .errors import (
    ConcurrentSessionUseError,
    ConfigurationError,
    DatabaseUnavailableError,
    DBSessionError,
    MissingDriverError,
    NoActiveSessionError,
    PoolTimeoutError,
    SessionFinishedError,
)
from .manager import DatabaseSessionManager

__all__ = [
    "CommitPolicy",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "DBSessionError",
    "DatabaseSessionManager",
    "DatabaseUnavailableError",
    "MissingDriverError",
    "NoActiveSessionError",
    "PoolTimeoutError",
    "SessionFinishedError",
]

__version__ = "0.1.0.dev0"

logging.getLogger("fastapi_dbsession").addHandler(logging.NullHandler())
