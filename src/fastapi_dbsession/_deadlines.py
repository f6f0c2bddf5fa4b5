"""Give every round trip to the database a client-side deadline: ``command_timeout``.

A server that stops answering (frozen, a dead host behind a live TCP stack, a network that
drops packets) leaves the client waiting forever: TCP keepalives succeed while the server's
kernel still acknowledges, and a statement timeout runs on the server, which is the part that
stopped. :func:`install` wraps the engine dialect's ``do_commit``, ``do_rollback`` and
``do_ping``, and ``_roundtrips`` its statements (``do_execute``, ``do_executemany``,
``do_execute_no_params``), so that one shared watchdog thread knows when each round trip
began. A round trip still running ``command_timeout`` seconds later has its socket shut down:
the driver's blocked read returns at once with a lost connection, the wrapper raises
:class:`CommandTimeoutError` in its place, and the connection is invalidated (never returned
to the pool: a statement's by the wrapper, a ``COMMIT`` / ``ROLLBACK``'s by SQLAlchemy when
the next round trip meets the shut socket). This works the same for every driver, sync and
asyncio, because it acts on the socket, not on the driver's API.

The cost on a round trip that answers in time is one entry put into a dict and popped again,
no lock and no system call: the watchdog finds the connection's socket only when it fires,
and sleeps until the earliest deadline it knows of (forever while no round trip runs).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._liveness import socket_fd
from .errors import CommandTimeoutError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

_Entry = tuple[float, Callable[..., object], tuple[Any, ...]]
"""(deadline, how to find the DBAPI connection, the round trip's arguments)."""


class _Watchdog:
    """One thread per process: shuts down the sockets of round trips past their deadline.

    ``active`` maps a token to a running round trip. Whoever pops a token owns its end: the
    round trip when it answered in time, else the watchdog, which pops and shuts the socket
    down holding ``fired`` (so the round trip, finding its token gone, waits for the shutdown
    before the connection is closed and its file descriptor reused). The thread starts with
    the first round trip of the process (of a forked child too) and sleeps until
    ``next_wake``, the earliest deadline it knows of (forever while none runs): a round trip
    wakes it only if its own deadline is earlier, so with one ``command_timeout`` it wakes
    about once per deadline, however many round trips run.
    """

    def __init__(self) -> None:
        self.active: dict[int, _Entry] = {}
        self.tokens = itertools.count()
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh (in a forked child, the parent's thread and round trips are not ours)."""
        self.active.clear()
        self.next_wake = math.inf
        self.fired = threading.Lock()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake_up(self) -> None:
        """Called by a round trip whose deadline comes before the thread's next wake-up."""
        with self.fired:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fastapi-dbsession-deadlines", daemon=True
                )
                self._thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.clear()
            now = time.monotonic()
            earliest = math.inf
            for token, entry in list(self.active.items()):
                if entry[0] <= now:
                    self._fire(token)
                elif entry[0] < earliest:
                    earliest = entry[0]
            self.next_wake = earliest
            # a round trip armed during the scan compared its deadline with the old next_wake
            if any(entry[0] < earliest for entry in list(self.active.values())):
                continue
            self.wake.wait(None if earliest == math.inf else earliest - now)

    def _fire(self, token: int) -> None:
        with self.fired:
            entry = self.active.pop(token, None)
            if entry is None:
                return  # it answered meanwhile
            _, connection_of, args = entry
            try:
                fd = socket_fd(connection_of(*args))
            except Exception:  # the connection's state changed under us
                fd = None
            if fd is None:
                logger.warning("a round trip ran past command_timeout; its socket was not found")
                return
            _shut_down(fd)


def _shut_down(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


watchdog = _Watchdog()
"""The process's watchdog (``_roundtrips`` arms it for each statement)."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=watchdog.after_fork)


def install(engine: Engine, command_timeout: float) -> None:
    """Put ``engine``'s ``COMMIT``, ``ROLLBACK`` and ping under a ``command_timeout``-second
    deadline (its statements get theirs from ``_roundtrips``, in the one statement wrapper)."""
    dialect: Any = engine.dialect
    for name in ("do_commit", "do_rollback", "do_ping"):
        method = getattr(dialect, name)
        guarded = _guarded(method, command_timeout, _of_connection, timed_out)
        idle = _IDLE_PROBES.get(dialect.driver) if name == "do_rollback" else None
        setattr(dialect, name, guarded if idle is None else _unless_idle(idle, method, guarded))


def _asyncpg_idle(connection: Any) -> bool:
    # SQLAlchemy's asyncpg adapter sends ROLLBACK only for a transaction it began
    return getattr(connection, "_transaction", False) is None


def _psycopg_idle(connection: Any) -> bool:
    # psycopg 3 sends nothing for a rollback outside a transaction (and not in a pipeline)
    return bool(
        getattr(connection, "_pipeline", True) is None and connection.info.transaction_status == 0
    )


_IDLE_PROBES: dict[str, Callable[[Any], bool]] = {
    "asyncpg": _asyncpg_idle,
    "psycopg": _psycopg_idle,
}
"""Per driver: whether a ``do_rollback`` of this connection sends nothing (no deadline then).

The pool rolls back every connection it takes back, also one whose transaction was just
committed: that rollback is a no-op in the driver, and skips the watchdog here."""


def _unless_idle(
    idle: Callable[[Any], bool], method: Callable[..., Any], guarded: Callable[..., Any]
) -> Callable[..., Any]:
    def rollback(connection: Any) -> Any:
        try:
            nothing_to_send = idle(connection)
        except Exception:  # another version's internals: keep the deadline
            nothing_to_send = False
        return method(connection) if nothing_to_send else guarded(connection)

    return rollback


def _guarded(
    method: Callable[..., Any],
    seconds: float,
    connection_of: Callable[..., object],
    timed_out: Callable[[float], Exception],
) -> Callable[..., Any]:
    """``method`` under the watchdog: past ``seconds``, its socket is shut down and
    ``timed_out(seconds)`` raised in place of whatever the driver raised (or returned)."""
    active = watchdog.active
    tokens = watchdog.tokens
    monotonic = time.monotonic

    def run(*args: Any) -> Any:
        token = next(tokens)
        deadline = monotonic() + seconds
        active[token] = (deadline, connection_of, args)
        if deadline < watchdog.next_wake:
            watchdog.wake_up()
        try:
            result = method(*args)
        except Exception as exc:
            if active.pop(token, None) is None:
                raise timed_out(seconds) from exc
            raise
        if active.pop(token, None) is None:  # answered just as the socket was shut down
            raise timed_out(seconds)
        return result

    return run


def bound_handshake(engine: Engine) -> None:
    """Make the MySQL drivers' ``connect_timeout`` cover the handshake, not only the TCP connect.

    PyMySQL and aiomysql apply it to opening the socket and then wait for the server's greeting
    without a limit: the kernel of a frozen server accepts the connection, and nothing ever
    answers. PyMySQL is created with ``defer_connect=True`` and connected under the watchdog;
    aiomysql's connect runs under ``asyncio.wait_for``. The driver's ``connect_timeout``
    argument (ours, the URL's or ``connect_args``') is the deadline.
    """
    dialect: Any = engine.dialect
    connect = dialect.connect
    if dialect.driver == "pymysql":

        def connect_pymysql(*cargs: Any, **cparams: Any) -> Any:
            seconds = cparams.get("connect_timeout")
            if not seconds or cparams.get("defer_connect"):
                return connect(*cargs, **cparams)
            connection = connect(*cargs, **cparams, defer_connect=True)
            _guarded(connection.connect, seconds, lambda: connection, _no_greeting)()
            return connection

        dialect.connect = connect_pymysql
    elif dialect.driver == "aiomysql":
        aiomysql = dialect.loaded_dbapi.aiomysql

        async def connect_aiomysql(*args: Any, **kwargs: Any) -> Any:
            connection = aiomysql.Connection(*args, **kwargs)
            handshake: Any = getattr(connection, "_connect", None)  # what aiomysql.connect awaits
            try:
                await asyncio.wait_for(handshake(), kwargs["connect_timeout"])
            except BaseException:
                connection.close()  # a cancelled handshake leaves its transport open
                raise
            return connection

        def connect_bounded(*cargs: Any, **cparams: Any) -> Any:
            if cparams.get("connect_timeout") and hasattr(aiomysql.Connection, "_connect"):
                cparams.setdefault("async_creator_fn", connect_aiomysql)
            return connect(*cargs, **cparams)

        dialect.connect = connect_bounded


def _no_greeting(seconds: float) -> TimeoutError:
    with watchdog.fired:
        pass
    return TimeoutError(f"the server did not answer the handshake within {seconds:g} seconds")


def of_context(cursor: object, statement: object, *rest: Any) -> object:
    """The DBAPI connection of a statement's ``do_execute`` arguments (for the watchdog)."""
    context = rest[-1] if rest else None
    return None if context is None else context.root_connection.connection.dbapi_connection


def _of_connection(connection: object) -> object:
    return getattr(connection, "dbapi_connection", connection)


def timed_out(seconds: float) -> CommandTimeoutError:
    """The error for a round trip past its deadline (once its socket is shut down)."""
    with watchdog.fired:  # the watchdog finished shutting the socket down
        pass
    return CommandTimeoutError(
        f"The database did not answer within command_timeout={seconds:g} seconds, so the "
        "connection was closed and discarded (the server may be frozen, overloaded or "
        "unreachable). Raise command_timeout for statements that legitimately run longer, "
        "or pass command_timeout=None to wait forever; for a limit the server enforces, use "
        "timeout= on the transaction."
    )
