"""Keep dead pooled connections away from requests without a round trip to the server.

SQLAlchemy's ``pool_pre_ping=True`` sends a statement (three round trips on asyncpg) each time
the pool lends a connection. This module gets the same safety from what the client already
knows, installed on an engine by :func:`install`:

- **at checkout**, the driver's own closed state, then (psycopg 3, psycopg2, PyMySQL) a
  zero-timeout poll of the idle connection's socket: an idle connection has nothing to say, so
  a readable socket means EOF, an error or an asynchronous message. asyncpg and aiomysql need
  no poll: their idle socket stays registered with the event loop, so what the loop has read
  is already in the driver's state (asyncpg's ``connection_lost`` closes the connection,
  aiomysql's stream records EOF or buffers the message). Only when something was seen is the
  real ping sent; a closed or failing connection raises ``DisconnectionError``, which makes
  the pool replace it transparently;
- **at the first statement after checkout**, a disconnect error (the connection died between
  the check and the statement, or the socket or the loop did not show it yet) means nothing of the
  transaction reached the server: the connection is replaced in place and the statement sent
  again, once. Never after anything was sent, never in autocommit mode (the statement may have
  committed), never with a custom isolation level (the new connection would not carry it).

SQLAlchemy's pool gives a checkout two attempts: when the new connection that replaced a dead
one is dead as well, the database is ending connections as fast as they are made (killed,
restarting, failing over), and the checkout raises :class:`DatabaseUnavailableError` (a 503
with ``Retry-After`` for a request) instead of SQLAlchemy's ``InvalidRequestError("This
connection is closed")``, which looks like a bug. Nothing was sent.

Some drivers expose their socket only through attributes without a public accessor (asyncpg's
``_transport``, PyMySQL's ``_sock``, aiomysql's ``_reader``), and SQLAlchemy has no public way
to reconnect a checked-out connection in place (``_connection_record``). They are read with
``getattr`` and a default: where one is missing, the check falls back to the real ping and the
first statement is not re-sent. The only other module that reads one is ``_deadlines``
(aiomysql's handshake coroutine, to bound it).
"""

from __future__ import annotations

import logging
import select
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError

from . import _urls
from .errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect, Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, ExecutionContext
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

logger = logging.getLogger(__name__)

IDLE, SUSPECT, CLOSED = "idle", "suspect", "closed"
FIRST = "fastapi_dbsession.first_statement"
"""Connection info key: True while nothing was sent since checkout (``_roundtrips`` reads it)."""
_POLL = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def install(engine: Engine) -> None:
    """Check connections at checkout and mark the first statement after it.

    The checkout check is a pool ``checkout`` listener. The first-statement re-send is part of
    the one wrapper ``_roundtrips`` puts around the dialect's ``do_execute`` methods (with
    the :data:`FIRST` mark and :func:`replacement_cursor`), not a dialect event
    listener: any of those makes SQLAlchemy dispatch dialect events on every statement
    (``do_setinputsizes`` included), which costs more than the check itself.
    """
    sync_engine: Engine = getattr(engine, "sync_engine", engine)
    dialect = sync_engine.dialect

    def on_checkout(
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        if connection_state(dbapi_connection) is not IDLE:  # the common case: two calls
            try:
                check(dialect, dbapi_connection)
            except DisconnectionError as exc:
                _dead_again(proxy, exc, sync_engine)
                raise
        record.info[FIRST] = True

    event.listen(sync_engine, "checkout", on_checkout)


_met_a_dead_one: weakref.WeakSet[PoolProxiedConnection] = weakref.WeakSet()
"""Checkouts (the pool's proxy, one per checkout) whose first connection was dead."""


def _dead_again(proxy: PoolProxiedConnection, exc: DisconnectionError, engine: Engine) -> None:
    """Raise ``DatabaseUnavailableError`` if this checkout already met a dead connection.

    The pool's own answer to a second dead connection is ``InvalidRequestError("This
    connection is closed")``; raising our error instead ends the checkout the same way (the
    pool discards the connection) but says that the database is dropping connections.
    """
    if proxy not in _met_a_dead_one:
        _met_a_dead_one.add(proxy)
        return
    raise DatabaseUnavailableError(
        f"The database at {_urls.render(engine.url)} is dropping connections (killed, "
        "restarting, failing over): the connection the pool lent was dead, and so was the new "
        f"one opened to replace it ({exc}). Nothing of the transaction was sent; the client "
        "may retry shortly."
    ) from exc


def check(dialect: Dialect, dbapi_connection: DBAPIConnection) -> None:
    """Raise ``DisconnectionError`` for a connection that is closed or fails its ping.

    The ping is only sent when the connection's state or socket says something happened.
    """
    state = connection_state(dbapi_connection)
    if state is IDLE:
        return
    if state is CLOSED:
        raise DisconnectionError("the driver reports the pooled connection closed")
    try:
        alive = dialect.do_ping(dbapi_connection)
    except Exception as exc:  # whatever the socket held, this connection is not usable
        raise DisconnectionError(f"the pooled connection failed its ping: {exc!r}") from exc
    if not alive:
        raise DisconnectionError("the pooled connection failed its ping")


def connection_state(dbapi_connection: object) -> str:
    """``IDLE``, ``SUSPECT`` (something arrived, or we cannot tell: ping it) or ``CLOSED``."""
    entry = _probes.get(type(dbapi_connection))
    if entry is None:
        entry = _probes[type(dbapi_connection)] = _probe_for(dbapi_connection)
    probe, adapted = entry
    driver: Any = dbapi_connection
    try:
        return probe(driver.driver_connection if adapted else driver)
    except Exception:  # a driver state we do not know: let the real ping decide
        return SUSPECT


def _probe_for(dbapi_connection: object) -> tuple[Callable[[Any], str], bool]:
    """The probe of a DBAPI connection's type, and whether it is SQLAlchemy's adapter of an
    asyncio driver's connection (``driver_connection``), looked up once per type."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    adapted = driver is not None and driver is not dbapi_connection
    kind = type(driver if adapted else dbapi_connection)
    return _PROBES_BY_PACKAGE.get(kind.__module__.partition(".")[0], _unknown), adapted


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, _POLL)
    return bool(poller.poll(0))


def _socket_state(fd: int | None) -> str:
    if fd is None or fd < 0:
        return SUSPECT
    return SUSPECT if _readable(fd) else IDLE


def _psycopg(connection: Any) -> str:  # psycopg 3, sync and async
    if connection.closed or connection.broken:
        return CLOSED
    return _socket_state(connection.fileno())


def _psycopg2(connection: Any) -> str:
    if connection.closed:
        return CLOSED
    return _socket_state(connection.fileno())


def _asyncpg(connection: Any) -> str:
    # The idle socket stays registered with the event loop: an EOF or error the loop has seen
    # has already closed the connection (connection_lost), so no poll. One that arrived after
    # the loop's last look fails the first statement, which is then re-sent.
    return CLOSED if connection.is_closed() else IDLE


def _pymysql(connection: Any) -> str:
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return CLOSED
    return _socket_state(sock.fileno())


def _aiomysql(connection: Any) -> str:
    if connection.closed:
        return CLOSED
    reader = getattr(connection, "_reader", None)
    if reader is None or getattr(reader, "_eof", True) or getattr(reader, "_buffer", b"x"):
        return SUSPECT  # the loop already read EOF or a message into the stream's buffer
    return IDLE  # the loop reads the idle socket: what it has not seen yet, the re-send covers


def _unknown(connection: Any) -> str:
    return SUSPECT


_PROBES_BY_PACKAGE: dict[str, Callable[[Any], str]] = {
    "psycopg": _psycopg,
    "psycopg2": _psycopg2,
    "asyncpg": _asyncpg,
    "pymysql": _pymysql,
    "aiomysql": _aiomysql,
}
_probes: dict[type, tuple[Callable[[Any], str], bool]] = {}


def replacement_cursor(
    dialect: Dialect, context: ExecutionContext, exc: Exception
) -> DBAPICursor | None:
    """After the first statement since checkout failed with ``exc``: if it met a dead
    connection and may be re-sent, replace the connection in place and return a cursor on
    the new one (None: raise ``exc``)."""
    proxied = context.root_connection.connection
    if not _may_resend(dialect, context, proxied, exc):
        return None
    cursor = _reconnect_in_place(proxied, context, exc)
    if cursor is None:
        return None
    logger.warning(
        "the connection died before the transaction's first statement (%s: %s); sent it "
        "again on a new connection",
        type(exc).__name__,
        str(exc).strip().splitlines()[0] if str(exc).strip() else "",
    )
    return cursor


def _may_resend(
    dialect: Dialect, context: ExecutionContext, proxied: PoolProxiedConnection, exc: Exception
) -> bool:
    if not isinstance(exc, dialect.loaded_dbapi.Error):
        return False
    if context.execution_options.get("isolation_level") is not None:
        return False  # AUTOCOMMIT may have committed; another level would be lost
    if _autocommit(proxied.dbapi_connection):
        return False
    return bool(dialect.is_disconnect(exc, proxied.dbapi_connection, context.cursor))


def _autocommit(dbapi_connection: object) -> bool:
    """Whether the connection commits every statement (unknown counts as yes: never resend)."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    for candidate in (dbapi_connection, driver):
        getter = getattr(candidate, "get_autocommit", None)  # PyMySQL, aiomysql
        if callable(getter):
            return bool(getter())
        mode = getattr(candidate, "autocommit", None)  # psycopg, psycopg2, SQLAlchemy's asyncpg
        if isinstance(mode, bool):
            return mode
    return True


def _reconnect_in_place(
    proxied: PoolProxiedConnection, context: ExecutionContext, exc: Exception
) -> DBAPICursor | None:
    """Swap a fresh DBAPI connection under the checked-out one; return a cursor on it."""
    record = getattr(proxied, "_connection_record", None)
    if record is None or not hasattr(record, "get_connection"):
        return None
    record.invalidate(exc)
    proxied.dbapi_connection = record.get_connection()  # type: ignore[misc]
    cursor = context.create_cursor()
    context.cursor = cursor
    return cursor


def socket_fd(dbapi_connection: object) -> int | None:
    """The file descriptor of a DBAPI connection's socket, or None when it cannot be found."""
    driver: Any = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    package = type(driver).__module__.partition(".")[0]
    sock: Any = None
    try:
        if package in ("psycopg", "psycopg2"):
            return int(driver.fileno())
        if package == "asyncpg":
            transport = getattr(driver, "_transport", None)
            sock = None if transport is None else transport.get_extra_info("socket")
        elif package == "pymysql":
            sock = getattr(driver, "_sock", None)
        elif package == "aiomysql":
            writer = getattr(driver, "_writer", None)
            sock = None if writer is None else writer.transport.get_extra_info("socket")
        return None if sock is None else int(sock.fileno())
    except Exception:  # closed, or a driver state we do not know
        return None
