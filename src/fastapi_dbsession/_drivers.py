"""Give each database driver the connect arguments its URL and the PgBouncer preset call for.

Three decisions, all per driver, none of them I/O:

- **PgBouncer** in transaction mode hands every transaction to whichever server connection is
  free, so a statement a driver prepared in one transaction is missing (or there already,
  under the same name) in the next. ``pgbouncer=True`` turns server-side prepared statements
  off where a driver makes them: psycopg 3 ``prepare_threshold=None``; asyncpg
  ``statement_cache_size=0`` (asyncpg's own cache, which its ping uses too), SQLAlchemy's
  ``prepared_statement_cache_size=0`` and unique statement names (SQLAlchemy's documented
  PgBouncer recipe, so two client connections never collide on one server connection).
  psycopg2 and pg8000 prepare nothing on the server: nothing to change.
- **URL query values** reach the driver as strings; the numeric ones a driver compares with
  numbers are converted here (``?statement_cache_size=0`` for asyncpg, ``?prepare_threshold=``
  for psycopg), or refused with an error naming the parameter.
- **Which connect arguments the two sides may share**: ``engine_options`` feeds both engines,
  but psycopg's ``connect_args`` mean nothing (a ``TypeError`` at connect) to asyncpg.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import URL

from . import _urls
from .errors import ConfigurationError


def _statement_name() -> str:
    """A prepared statement name no other client of a PgBouncer server connection uses."""
    return f"__asyncpg_{uuid.uuid4()}__"


# driver -> connect arguments that keep it off server-side prepared statements
_PGBOUNCER: dict[str, Mapping[str, Any]] = {
    "psycopg": {"prepare_threshold": None},
    "psycopg_async": {"prepare_threshold": None},
    "asyncpg": {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _statement_name,
    },
}


def _optional_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("", "none", "null") else int(raw)


# driver -> URL query parameters the driver compares with numbers: name -> (parser, described)
_QUERY_NUMBERS: dict[str, dict[str, tuple[Callable[[str], object], str]]] = {
    "asyncpg": {
        "statement_cache_size": (int, "an integer"),
        "prepared_statement_cache_size": (int, "an integer"),
        "max_cached_statement_lifetime": (int, "an integer (seconds)"),
        "max_cacheable_statement_size": (int, "an integer (bytes)"),
        "command_timeout": (float, "a number of seconds"),
        "timeout": (float, "a number of seconds"),
    },
    "psycopg": {"prepare_threshold": (_optional_int, 'an integer, or "none"')},
    "psycopg_async": {"prepare_threshold": (_optional_int, 'an integer, or "none"')},
}

# pairs of drivers whose connect() takes the same keyword arguments (one library, or one
# built on the other): engine_options' connect_args serve both sides
_SAME_ARGUMENTS: frozenset[frozenset[str]] = frozenset(
    {
        frozenset({"psycopg", "psycopg_async"}),
        frozenset({"pysqlite", "aiosqlite"}),
        frozenset({"pymysql", "aiomysql"}),
    }
)


# driver -> its connect argument for a connect timeout, and how it wants the seconds
_CONNECT_TIMEOUT: dict[str, tuple[str, Callable[[float], object]]] = {
    "psycopg": ("connect_timeout", math.ceil),  # libpq: whole seconds
    "psycopg_async": ("connect_timeout", math.ceil),
    "psycopg2": ("connect_timeout", math.ceil),
    "asyncpg": ("timeout", float),
    "pymysql": ("connect_timeout", float),
    "aiomysql": ("connect_timeout", float),
}


def connect_defaults(
    url: URL, *, pgbouncer: bool, connect_timeout: float | None = None
) -> dict[str, Any]:
    """The connect arguments ``url``'s driver gets before the user's own.

    Raises:
        ConfigurationError: A numeric URL query parameter does not parse.
    """
    driver = url.get_driver_name()
    defaults = dict(_PGBOUNCER.get(driver, {})) if pgbouncer else {}
    timeout_argument = _CONNECT_TIMEOUT.get(driver)
    if connect_timeout is not None and timeout_argument is not None:
        name, convert = timeout_argument
        if name not in url.query:  # the URL's own value wins (connect_args would override it)
            defaults[name] = convert(connect_timeout)
    for name, (parse, described) in _QUERY_NUMBERS.get(driver, {}).items():
        raw = url.query.get(name)
        if not isinstance(raw, str):
            continue  # absent (or repeated: the driver's own error is clearer then)
        try:
            defaults[name] = parse(raw)
        except ValueError:
            raise ConfigurationError(
                f"The URL query parameter {name}={raw!r} in {_urls.render(url)} must be "
                f"{described}. Fix the URL, or pass it as a number in "
                f'engine_options={{"connect_args": {{"{name}": ...}}}}.'
            ) from None
    return defaults


def check_pgbouncer(urls: tuple[URL | None, ...]) -> None:
    """Refuse ``pgbouncer=True`` on a database that is not PostgreSQL.

    Raises:
        ConfigurationError: A URL names another backend.
    """
    for url in urls:
        if url is not None and url.get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"pgbouncer=True is for PostgreSQL behind PgBouncer, but {_urls.render(url)} "
                f"is {url.get_backend_name()}. Remove pgbouncer=True."
            )


def shares_connect_args(url: URL | None, async_url: URL | None) -> bool:
    """Whether the sync side's ``connect_args`` are valid for the async side's driver too."""
    if url is None or async_url is None:
        return True
    drivers = frozenset({url.get_driver_name(), async_url.get_driver_name()})
    return len(drivers) == 1 or drivers in _SAME_ARGUMENTS
