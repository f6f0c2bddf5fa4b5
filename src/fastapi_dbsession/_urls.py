"""Parse database URLs, pair sync and async drivers, and render URLs without passwords.

Multi-host PostgreSQL URLs (failover, ``target_session_attrs=read-write``) are accepted in
SQLAlchemy's form (``postgresql+psycopg://app@/app?host=h1:5432&host=h2:5432``) and in libpq's
(``postgresql+psycopg://app@h1:5432,h2:5432/app``), which is rewritten into the former.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from . import _secrets
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
    "mysql": "pip install mysql-connector-python",  # mysql+mysqlconnector's module, mysql.connector
    "aiosqlite": 'pip install "fastapi-dbsession[sqlite]"',
    "greenlet": 'pip install "fastapi-dbsession[asyncio]"',
    "pydantic_settings": 'pip install "fastapi-dbsession[settings]"',
}


# libpq's multi-host form "postgresql://user:pw@h1:5432,h2:5433/db?..." (SQLAlchemy spells it
# "postgresql://user:pw@/db?host=h1:5432&host=h2:5433")
_COMMA_HOSTS = re.compile(
    r"^(?P<scheme>postgresql(?:\+\w+)?)://(?P<auth>[^@/?#]*@)?"
    r"(?P<hosts>[^@/?#]*,[^@/?#]*)(?P<rest>[/?].*)?$"
)

_HOST_PORT = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::\d+)?$")


def _query_hosts(value: str) -> str:
    """Rewrite libpq's comma-separated hosts into SQLAlchemy's repeated ``host=`` query."""
    match = _COMMA_HOSTS.match(value)
    if match is None:
        return value
    names = [host.strip() for host in match["hosts"].split(",")]
    if not all(_HOST_PORT.match(name) for name in names):
        return value  # make_url refuses it; _parse_hint explains
    path, _, query = (match["rest"] or "/").partition("?")
    hosts = "&".join(f"host={quote(name, safe=':[]')}" for name in names)
    return f"{match['scheme']}://{match['auth'] or ''}{path}?{hosts}{'&' + query if query else ''}"


def mask_text(text: str, url: URL | None = None) -> str:
    """Hide anything that looks like a password inside ``text``, and ``url``'s secrets."""
    return _secrets.mask_text(text, _secrets.secrets_of(url))


def render(url: URL) -> str:
    """Render ``url`` for messages, logs and ``repr()``: passwords become ``***``."""
    return _secrets.render(url)


def parse(value: object, *, argument: str) -> URL:
    """Turn a user's URL (string or ``sqlalchemy.URL``) into a ``URL`` or raise a clear error.

    A ``password`` given in the query string moves to the URL's password, where SQLAlchemy's
    own ``repr()`` masks it too (every driver we pair reads it the same way).

    Raises:
        ConfigurationError: Not a URL, or one whose shape shows a misplaced password (an
            unencoded ``@``, a missing ``//``), or a user or password on a SQLite URL. The
            message never contains the password.
    """
    if isinstance(value, URL):
        url = value
        # render() percent-encodes the database name: decoded, a "user:password@host" that
        # ended up there is masked as in a string
        shown = _secrets.mask_raw(unquote(render(value)))
    elif isinstance(value, str):
        shown = _secrets.mask_raw(value)
        try:
            url = make_url(_query_hosts(value))
        except (ArgumentError, ValueError):
            raise ConfigurationError(
                f"{argument}={shown!r} is not a valid database URL. Expected "
                '"dialect+driver://user:password@host:port/dbname", for example '
                '"postgresql+psycopg://app@localhost/app" or "sqlite:///./app.db"'
                f"{_parse_hint(value)}"
            ) from None
    else:
        raise ConfigurationError(
            f"{argument} must be a database URL string or a sqlalchemy.URL, "
            f"not {type(value).__name__}. Example: "
            f'DatabaseSessionManager("postgresql+psycopg://user@host/dbname").'
        )
    _check_shape(url, value if isinstance(value, str) else str(url), shown, argument=argument)
    _check_dialect(url, shown, argument=argument)
    password = url.query.get("password")
    if not url.password and isinstance(password, str):  # "u:@h" has an empty password: ''
        url = url.set(password=password).difference_update_query(["password"])
    return url


def _parse_hint(value: str) -> str:
    """Why a URL string does not parse, for the most common slips."""
    if "://" not in value:
        return (
            '. It has no "://" after the dialect name: write "dialect+driver://..." (two '
            "slashes before the user or host)."
        )
    authority = value.partition("://")[2].rpartition("@")[2].partition("/")[0]
    if "," in authority:
        return (
            ". It names several hosts: each must be host or host:port with a numeric port "
            '("postgresql+psycopg://user@h1:5432,h2:5432/dbname"), or write them as query '
            'parameters, "postgresql+psycopg://user@/dbname?host=h1:5432&host=h2:5432".'
        )
    return (
        ". A port must be a number; special characters in the user or password (@ : / ? # %) "
        "must be percent-encoded: urllib.parse.quote_plus(password)."
    )


def _check_dialect(url: URL, shown: str, *, argument: str) -> None:
    """Refuse an unknown "dialect+driver" now rather than at the first request."""
    try:
        url.get_dialect()
    except (NoSuchModuleError, ValueError):  # ValueError: "postgresql++psycopg"
        backend, _, driver = url.drivername.partition("+")
        what = f"no driver {driver!r} for {backend!r}" if driver else f"no dialect {backend!r}"
        raise ConfigurationError(
            f"{argument}={shown!r}: SQLAlchemy has {what}. Check the spelling of "
            '"dialect+driver", e.g. "postgresql+psycopg", "postgresql+asyncpg", '
            '"mysql+pymysql", "mariadb+aiomysql", "sqlite" (a third-party dialect must be '
            "installed)."
        ) from None
    except ImportError:
        pass  # a dialect that imports its driver: MissingDriverError when the engine is built


def _check_shape(url: URL, raw: str, shown: str, *, argument: str) -> None:
    """Refuse URLs that parsed, but not as the user meant: their password would leak."""
    if (url.host is not None and "@" in url.host) or (
        url.get_backend_name() != "sqlite" and raw.partition("://")[2].count("@") > 1
    ):
        raise ConfigurationError(
            f"{argument}={shown!r} has more than one '@': the password (or the user name, or "
            "a query value) contains an '@' that is not percent-encoded. Encode it as %40, "
            "e.g. with urllib.parse.quote_plus(password), or build the URL with "
            "sqlalchemy.URL.create()."
        )
    if any(mark in key for key in url.query for mark in "?/@"):
        raise ConfigurationError(
            f"{argument}={shown!r}: a query parameter name contains '?', '/' or '@', so a "
            "separator is misplaced (a second '?', or a '?' where the '@' before the host "
            'belongs). Write "dialect+driver://user:password@host/dbname?key=value&key=value".'
        )
    database = url.database or ""
    at = "@" in raw or (url.get_backend_name() != "sqlite" and "%40" in raw)
    if url.host is None and ":" in database and at:
        raise ConfigurationError(
            f"{argument}={shown!r}: what looks like user:password@host ended up in the "
            'database name. Write "dialect+driver://user:password@host/dbname" (two slashes).'
        )
    if _secrets.has_secret_assignment(database):
        raise ConfigurationError(
            f"{argument}={shown!r}: the database name contains a password-like 'key=value': "
            'is the "?" before the query string missing? Write ".../dbname?password=..." '
            "(or put the password before the host: user:password@host)."
        )
    if url.get_backend_name() == "sqlite" and (
        url.username is not None or url.password is not None or url.host is not None
    ):
        raise ConfigurationError(
            f"{argument}={shown!r}: SQLite URLs have no user, password or host. Write "
            '"sqlite:///relative/path.db", "sqlite:////absolute/path.db" or "sqlite://" '
            "(in memory)."
        )


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
    # SQLAlchemy's own test (pysqlite's _is_url_file_db): make_url keeps "?mode=memory" of
    # "sqlite:///file:name?mode=memory&uri=true" in the query, never in the database name
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
