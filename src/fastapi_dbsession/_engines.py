"""Turn a URL and the user's options into a SQLAlchemy engine with safe per-backend defaults."""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.pool import AsyncAdaptedQueuePool, StaticPool

from . import _checks, _deadlines, _drivers, _liveness, _roundtrips, _urls
from .errors import ConfigurationError, DatabaseUnavailableError, MissingDriverError

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

logger = logging.getLogger(__name__)

_E = TypeVar("_E")

# SQLite engines whose BEGIN we took over (engines the user hands us are left as they are).
_EXPLICIT_BEGIN: weakref.WeakSet[Engine] = weakref.WeakSet()

# Options whose type we check ourselves: SQLAlchemy would accept a string here and fail much
# later, far from the mistake.
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "pool_size": (int,),
    "max_overflow": (int,),
    "pool_recycle": (int, float),
    "pool_timeout": (int, float),
    "pool_pre_ping": (bool,),
    "echo": (bool, str),
    "echo_pool": (bool, str),
    "connect_args": (Mapping,),
    "sqlite_pragmas": (Mapping,),
    "sqlite_explicit_begin": (bool,),
}

# Our own keys in engine_options (SQLite only), taken out before create_engine() sees them.
_SQLITE_KEYS = ("sqlite_pragmas", "sqlite_explicit_begin")
_DEFAULT_PRAGMAS: dict[str, object] = {"foreign_keys": "ON"}
_PRAGMA_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRAGMA_VALUE = re.compile(r"-?[A-Za-z0-9_.]+\Z")


def check_options(options: object, *, argument: str) -> dict[str, Any]:
    """Validate a user's options mapping and return a copy of it."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"{argument} must be a dict of keyword arguments, not {type(options).__name__}. "
            f'Example: {argument}={{"pool_size": 10}}.'
        )
    checked = dict(options)
    for name, value in checked.items():
        if not isinstance(name, str):
            raise ConfigurationError(
                f"{argument} keys must be strings (keyword argument names, e.g. "
                f'"pool_size"), got {name!r}.'
            )
        expected = _OPTION_TYPES.get(name)
        if expected is not None and (
            not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
        ):
            names = " or ".join(t.__name__ for t in expected)
            shown = "" if name == "connect_args" else f" ({value!r})"  # may hold a password
            raise ConfigurationError(
                f"{argument}[{name!r}] must be {names}, not {type(value).__name__}{shown}. "
                "Convert it before passing it (values read from the environment are strings)."
            )
    return checked


def check_engine(options: object, *, argument: str) -> dict[str, Any]:
    """Validate ``engine_options`` / ``async_engine_options``: types, then values."""
    checked = check_options(options, argument=argument)
    _checks.engine_values(checked, argument=argument)
    return checked


def engine_options(
    url: URL,
    user_options: Mapping[str, Any],
    *,
    is_async: bool,
    pgbouncer: bool = False,
    connect_timeout: float | None = None,
) -> dict[str, Any]:
    """Merge the safe defaults for ``url``'s backend and driver under the user's options.

    ``connect_args``, lowest first: the backend's defaults, the PgBouncer preset, the URL's
    numeric query parameters converted, the user's ``connect_args``.
    """
    options: dict[str, Any] = {}
    connect_args: dict[str, Any] = _drivers.connect_defaults(
        url, pgbouncer=pgbouncer, connect_timeout=connect_timeout
    )
    if url.get_backend_name() == "sqlite":
        connect_args["check_same_thread"] = False
        if _urls.is_sqlite_memory(url):
            options["poolclass"] = StaticPool
        elif is_async:  # SQLAlchemy < 2.0.38 defaulted aiosqlite to NullPool: be consistent
            options["poolclass"] = AsyncAdaptedQueuePool
    options.update(user_options)
    for key in _SQLITE_KEYS:
        options.pop(key, None)
    options["connect_args"] = {**connect_args, **dict(user_options.get("connect_args", {}))}
    return options


def sqlite_pragmas(url: URL, user_options: Mapping[str, Any]) -> list[str]:
    """The ``PRAGMA`` statements every new SQLite connection runs (default: foreign keys on).

    ``engine_options={"sqlite_pragmas": {"foreign_keys": None}}`` drops one; other entries
    add or replace (``{"journal_mode": "WAL", "busy_timeout": 5000}``).

    Raises:
        ConfigurationError: SQLite keys on another backend, or a malformed pragma.
    """
    given = [key for key in _SQLITE_KEYS if key in user_options]
    if url.get_backend_name() != "sqlite":
        if given:
            raise ConfigurationError(
                f"engine_options[{given[0]!r}] only applies to SQLite, not to "
                f"{_urls.render(url)}. Remove it."
            )
        return []
    pragmas = {**_DEFAULT_PRAGMAS, **dict(user_options.get("sqlite_pragmas", {}))}
    statements = []
    for name, value in pragmas.items():
        if value is None:
            continue
        shown = ("ON" if value else "OFF") if isinstance(value, bool) else str(value)
        if not (isinstance(name, str) and _PRAGMA_WORD.match(name) and _PRAGMA_VALUE.match(shown)):
            raise ConfigurationError(
                f"sqlite_pragmas[{name!r}] = {value!r} is not a pragma SQLite accepts here: "
                'use a name and a plain value, e.g. {"journal_mode": "WAL", "foreign_keys": None}.'
            )
        statements.append(f"PRAGMA {name}={shown}")
    return statements


def create(
    factory: Callable[..., _E],
    url: URL,
    user_options: Mapping[str, Any],
    *,
    side: str,
    pgbouncer: bool = False,
    timeouts: tuple[float | None, float | None] = (None, None),
) -> _E:
    """Call ``create_engine`` / ``create_async_engine`` and explain what can go wrong.

    ``timeouts``: ``(connect_timeout, command_timeout)`` in seconds (None: none).
    """
    shown = _urls.render(url)
    connect_timeout, command_timeout = timeouts
    options = engine_options(
        url,
        user_options,
        is_async=side == "async",
        pgbouncer=pgbouncer,
        connect_timeout=connect_timeout,
    )
    try:
        engine = factory(url, **options)
    except ModuleNotFoundError as exc:
        raise MissingDriverError(
            f"The {side} engine for {shown} needs the Python module {exc.name!r}, which is "
            f"not installed. Install it with: {_urls.install_hint(exc.name)}."
        ) from None
    except NoSuchModuleError:
        raise ConfigurationError(
            f"SQLAlchemy has no dialect or driver named {url.drivername!r} (in {shown}). "
            'Check the spelling of "dialect+driver", e.g. "postgresql+psycopg", '
            '"mysql+pymysql", "sqlite".'
        ) from None
    except InvalidRequestError as exc:
        raise ConfigurationError(
            f"Cannot build the {side} engine for {shown}: {_urls.mask_text(str(exc), url)}. "
            "Pass sync URLs as url= and asyncio URLs (asyncpg, aiosqlite, aiomysql, psycopg) "
            "as async_url=."
        ) from None
    except (TypeError, ArgumentError) as exc:
        hint = (
            "Check the hosts of the URL: a multi-host URL names each as host:port, and "
            "asyncpg needs the port of every host."
            if "host" in str(exc) or "port" in str(exc)
            else "Check the keys of engine_options / async_engine_options against "
            "create_engine()'s arguments."
        )
        raise ConfigurationError(
            f"Invalid engine options for {shown}: {_urls.mask_text(str(exc), url)}. {hint}"
        ) from None
    sync_engine: Engine = getattr(engine, "sync_engine", engine)  # type: ignore[arg-type]
    if url.get_backend_name() != "sqlite":
        _deadlines.bound_handshake(sync_engine)  # inside the explained connect: our errors
    _explain_connect_errors(sync_engine, url)
    if url.get_backend_name() == "sqlite":
        _sqlite_transactions(
            sync_engine,
            sqlite_pragmas(url, user_options),
            explicit_begin=user_options.get("sqlite_explicit_begin", True),
        )
    else:
        if command_timeout is not None:
            _deadlines.install(sync_engine, command_timeout)  # COMMIT, ROLLBACK, the ping
        liveness = "pool_pre_ping" not in user_options  # True: SQLAlchemy's ping; False: none
        if liveness:
            _liveness.install(sync_engine)
        # the statements: one wrapper for the deadline and the first-statement re-send
        _roundtrips.install(sync_engine, command_timeout=command_timeout, resend=liveness)
    logger.info("created %s engine for %s", side, shown)
    return engine


def _explain_connect_errors(engine: Engine, url: URL) -> None:
    """Make a failed connect raise our error, naming host:port with the password masked.

    Wraps the dialect's ``connect()`` (the pool calls it only to open a new connection, after
    any ``do_connect`` listeners, so pooled checkouts pay nothing). The driver's exception
    stays attached as ``__cause__``. Bad connect arguments (``TypeError``, ``ValueError``, the
    driver's ``ProgrammingError``) raise ``ConfigurationError``; anything else (refused, DNS,
    timeout, authentication, unknown database) ``DatabaseUnavailableError``.
    """
    dialect = engine.dialect
    connect = dialect.connect
    misconfigured: tuple[type[BaseException], ...] = (TypeError, ValueError)
    programming = getattr(dialect.loaded_dbapi, "ProgrammingError", None)
    if isinstance(programming, type) and issubclass(programming, BaseException):
        misconfigured += (programming,)

    def explained_connect(*cargs: Any, **cparams: Any) -> DBAPIConnection:
        try:
            return connect(*cargs, **cparams)
        except misconfigured as exc:
            raise ConfigurationError(
                f"The driver refused the connection arguments for {_urls.render(url)}: "
                f"{_reason(exc, url)}. Check the URL's query parameters and connect_args "
                "in engine_options against the driver's connect() arguments."
            ) from exc
        except Exception as exc:
            raise DatabaseUnavailableError(
                f"Cannot reach the database at {_address(url)} ({_urls.render(url)}): "
                f"{_reason(exc, url)}. Check that the server is running and reachable, and "
                "that the host, port, user, password and database name are right. "
                "FastAPI(lifespan=db.lifespan) checks this once at startup."
            ) from exc

    dialect.connect = explained_connect  # type: ignore[method-assign]


def _address(url: URL) -> str:
    """``host:port`` of ``url`` (the backend's default port when none is given)."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    hosts = url.query.get("host")
    if url.host is None and hosts:
        return ", ".join((hosts,) if isinstance(hosts, str) else hosts)
    port = url.port or _DEFAULT_PORTS.get(url.get_backend_name())
    host = url.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def _reason(exc: BaseException, url: URL) -> str:
    """The first line of a driver's error, its secrets masked."""
    lines = _urls.mask_text(str(exc), url).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def lacks_explicit_begin(engine: Engine) -> bool:
    """Whether ``engine`` is a SQLite engine on which pysqlite still delays BEGIN.

    True for a SQLite engine the user built: a test's outer transaction on it must send
    BEGIN itself, or the first SAVEPOINT's RELEASE would commit for real.
    """
    return engine.dialect.name == "sqlite" and engine not in _EXPLICIT_BEGIN


def _sqlite_transactions(engine: Engine, pragmas: list[str], *, explicit_begin: bool) -> None:
    """Make SQLite begin transactions when SQLAlchemy does, and run the pragmas.

    pysqlite (and aiosqlite on top of it) delays BEGIN until the first write, so reads before
    it run outside the transaction and SAVEPOINT does not work. Taking over BEGIN is the
    workaround SQLAlchemy's SQLite documentation gives (``sqlite_explicit_begin=False`` in the
    engine options leaves pysqlite's own handling).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        if explicit_begin:
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for statement in pragmas:
            cursor.execute(statement)
        cursor.close()

    if not explicit_begin:
        return

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN")

    _EXPLICIT_BEGIN.add(engine)
