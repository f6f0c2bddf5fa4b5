"""Parse database URLs, pair sync and async drivers, and render URLs without passwords.

Multi-host PostgreSQL URLs (failover, ``target_session_attrs=read-write``) are accepted in
SQLAlchemy's form (``postgresql+psycopg://app@/app?host=h1:5432&host=h2:5432``) and in libpq's
(``postgresql+psycopg://app@h1:5432,h2:5432/app``), which is rewritten into the former.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

# (backend, sync driver) -> async driver. The default driver of a backend is spelled None.
_ASYNC_TWIN: dict[tuple[str, str | None], str] = {
    ("sqlite", None): "aiosqlite",
    ("sqlite", "pysqlite"): "aiosqlite",
    ("postgresql", None): "asyncpg",
    ("postgresql", "psycopg2"): "asyncpg",
    ("postgresql", "psycopg2cffi"): "asyncpg",
    ("postgresql", "psycopg"): "psycopg",  # psycopg 3 serves both sides
    ("postgresql", "pg8000"): "asyncpg",
    ("mysql", None): "aiomysql",
    ("mysql", "pymysql"): "aiomysql",
    ("mysql", "mysqldb"): "aiomysql",
    ("mariadb", None): "aiomysql",
    ("mariadb", "pymysql"): "aiomysql",
    ("mariadb", "mysqldb"): "aiomysql",
}

# (backend, async driver) -> sync driver, for a manager given only an async URL.
_SYNC_TWIN: dict[tuple[str, str], str] = {
    ("sqlite", "aiosqlite"): "pysqlite",
    ("postgresql", "asyncpg"): "psycopg",
    ("postgresql", "psycopg_async"): "psycopg",
    ("mysql", "aiomysql"): "pymysql",
    ("mysql", "asyncmy"): "pymysql",
    ("mariadb", "aiomysql"): "pymysql",
    ("mariadb", "asyncmy"): "pymysql",
}

_ASYNC_DRIVERS = frozenset({"aiosqlite", "asyncpg", "psycopg_async", "aiomysql", "asyncmy"})

# Python module -> how to get it. Used to turn ModuleNotFoundError into an actionable error.
_INSTALL_HINT: dict[str, str] = {
    "psycopg": 'pip install "fastapi-dbsession[postgres]"',
    "asyncpg": 'pip install "fastapi-dbsession[postgres]"',
    "psycopg2": 'pip install psycopg2-binary (or use "postgresql+psycopg://", which '
    "fastapi-dbsession[postgres] installs)",
    "pymysql": 'pip install "fastapi-dbsession[mysql]"',
    "aiomysql": 'pip install "fastapi-dbsession[mysql]"',
    "MySQLdb": 'pip install mysqlclient (or use "mysql+pymysql://", which '
    "fastapi-dbsession[mysql] installs)",
    "asyncmy": "pip install asyncmy",
    "aiosqlite": 'pip install "fastapi-dbsession[sqlite]"',
    "greenlet": 'pip install "fastapi-dbsession[asyncio]"',
}

_PASSWORD_IN_TEXT = re.compile(r"(?P<prefix>://[^:/@\s]*:)(?P<password>[^@\s]*)(?=@)")


# libpq's multi-host form "postgresql://user:pw@h1:5432,h2:5433/db?..." (SQLAlchemy spells it
# "postgresql://user:pw@/db?host=h1:5432&host=h2:5433")
_COMMA_HOSTS = re.compile(
    r"^(?P<scheme>postgresql(?:\+\w+)?)://(?P<auth>[^@/?#]*@)?"
    r"(?P<hosts>[^@/?#]*,[^@/?#]*)(?P<rest>[/?].*)?$"
)


def _query_hosts(value: str) -> str:
    """Rewrite libpq's comma-separated hosts into SQLAlchemy's repeated ``host=`` query."""
    match = _COMMA_HOSTS.match(value)
    if match is None:
        return value
    path, _, query = (match["rest"] or "/").partition("?")
    hosts = "&".join(
        f"host={quote(host.strip(), safe=':[]')}" for host in match["hosts"].split(",")
    )
    return f"{match['scheme']}://{match['auth'] or ''}{path}?{hosts}{'&' + query if query else ''}"


def mask_text(text: str) -> str:
    """Hide anything that looks like the password of a URL inside ``text``."""
    return _PASSWORD_IN_TEXT.sub(r"\g<prefix>***", text)


def render(url: URL) -> str:
    """Render ``url`` for messages, logs and ``repr()``: the password becomes ``***``."""
    return url.render_as_string(hide_password=True)


def parse(value: object, *, argument: str) -> URL:
    """Turn a user's URL (string or ``sqlalchemy.URL``) into a ``URL`` or raise a clear error."""
    if isinstance(value, URL):
        return value
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{argument} must be a database URL string or a sqlalchemy.URL, "
            f"not {type(value).__name__}. Example: "
            f'DatabaseSessionManager("postgresql+psycopg://user@host/dbname").'
        )
    try:
        return make_url(_query_hosts(value))
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"{argument}={mask_text(value)!r} is not a valid database URL. Expected "
            f'"dialect+driver://user:password@host:port/dbname", for example '
            f'"postgresql+psycopg://app@localhost/app" or "sqlite:///./app.db". '
            f"SQLAlchemy said: {mask_text(str(exc))}"
        ) from None


def is_async_driver(url: URL) -> bool:
    """Tell whether ``url`` names an asyncio driver."""
    return url.get_driver_name() in _ASYNC_DRIVERS


def async_twin(url: URL) -> URL | None:
    """Return the async URL that pairs with sync ``url``, or None when no pair is known."""
    backend = url.get_backend_name()
    driver = url.drivername.partition("+")[2] or None
    twin = _ASYNC_TWIN.get((backend, driver))
    return None if twin is None else url.set(drivername=f"{backend}+{twin}")


def sync_twin(url: URL) -> URL | None:
    """Return the sync URL that pairs with async ``url``, or None when no pair is known."""
    backend = url.get_backend_name()
    twin = _SYNC_TWIN.get((backend, url.get_driver_name()))
    return None if twin is None else url.set(drivername=f"{backend}+{twin}")


def install_hint(module: str | None) -> str:
    """Say how to install the module named in a ModuleNotFoundError."""
    top = (module or "").partition(".")[0]
    return _INSTALL_HINT.get(top, f"pip install {top}" if top else "install the driver")


def is_sqlite_memory(url: URL) -> bool:
    """Tell whether ``url`` is an in-memory SQLite database (one per process, shared)."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or (
        database.startswith("file:") and "mode=memory" in database
    )
