"""Name every error the library raises.

Every exception derives from :class:`DBSessionError`, and each message says what went wrong,
the likely cause and the fix. No message contains a database password.

```
DBSessionError
├── ConfigurationError(DBSessionError, ValueError)        bad URL, option, policy
│   └── MissingDriverError(ConfigurationError, ImportError)  driver or greenlet not installed
├── DatabaseUnavailableError(DBSessionError, ConnectionError)  startup check failed
├── PoolTimeoutError(DBSessionError, TimeoutError)        no connection became free in time
├── SessionFinishedError(DBSessionError, RuntimeError)    request session used after it ended
├── ConcurrentSessionUseError(DBSessionError, RuntimeError)  one AsyncSession, two tasks
└── NoActiveSessionError(DBSessionError, RuntimeError)    nothing in scope
```
"""

from __future__ import annotations

__all__ = [
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "DBSessionError",
    "DatabaseUnavailableError",
    "MissingDriverError",
    "NoActiveSessionError",
    "PoolTimeoutError",
    "SessionFinishedError",
]


class DBSessionError(Exception):
    """Base class of every exception raised by fastapi-dbsession."""


class ConfigurationError(DBSessionError, ValueError):
    """The manager was given a URL, option or policy it cannot use."""


class MissingDriverError(ConfigurationError, ImportError):
    """A database driver (or greenlet, for async) is not installed.

    The message names the extra to install, e.g. ``pip install "fastapi-dbsession[postgres]"``.
    """


class DatabaseUnavailableError(DBSessionError, ConnectionError):
    """The startup check could not reach the database."""


class PoolTimeoutError(DBSessionError, TimeoutError):
    """A request waited longer than the pool timeout for a free connection."""


class SessionFinishedError(DBSessionError, RuntimeError):
    """A request session was used after its request transaction had finished."""


class ConcurrentSessionUseError(DBSessionError, RuntimeError):
    """Two tasks used one ``AsyncSession`` at the same time."""


class NoActiveSessionError(DBSessionError, RuntimeError):
    """No request session or transaction is active in the current context."""
