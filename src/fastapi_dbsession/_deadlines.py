"""Give every round trip to the database a client-side deadline: ``command_timeout``.

A server that stops answering (frozen, a dead host behind a live TCP stack, a network that
drops packets) leaves the client waiting forever: TCP keepalives succeed while the server's
kernel still acknowledges, and a statement timeout runs on the server, which is the part that
stopped. :func:`install` wraps the engine dialect's round trips (``do_execute``,
``do_executemany``, ``do_execute_no_params``, ``do_commit``, ``do_rollback``, ``do_ping``) so
that one shared watchdog thread knows when each began. A round trip still running
``command_timeout`` seconds later has its socket shut down: the driver's blocked read returns
at once with a lost connection, the wrapper raises :class:`CommandTimeoutError` in its place,
and the connection is invalidated (never returned to the pool). This works the same for
every driver, sync and asyncio, because it acts on the socket, not on the driver's API.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from ._liveness import socket_fd
from .errors import CommandTimeoutError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine, ExceptionContext


class _Watchdog:
    """One thread per process: shuts down the sockets of round trips past their deadline."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []  # (deadline, token, fd)
        self._active: dict[int, tuple[float, int]] = {}  # token -> (deadline, fd), running
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._pid = -1

    def arm(self, fd: int, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._condition:
            if self._pid != os.getpid():  # first use, or a forked child: (re)start the thread
                self._pid = os.getpid()
                self._heap.clear()
                self._active.clear()
                threading.Thread(
                    target=self._run, name="fastapi-dbsession-deadlines", daemon=True
                ).start()
            token = next(self._tokens)
            self._active[token] = (deadline, fd)
            if len(self._heap) > 64 and len(self._heap) > 4 * len(self._active):
                self._heap = [(when, t, f) for t, (when, f) in self._active.items()]
                heapq.heapify(self._heap)  # drop the finished ones: memory stays flat
            else:
                heapq.heappush(self._heap, (deadline, token, fd))
            if self._heap[0][1] == token:
                self._condition.notify()
        return token

    def disarm(self, token: int) -> bool:
        """End a round trip; True if its deadline had fired."""
        with self._condition:
            self._active.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._condition:
            while True:
                while self._heap and self._heap[0][1] not in self._active:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._condition.wait()
                    continue
                deadline, token, fd = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._condition.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._fired.add(token)
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


_watchdog = _Watchdog()


def install(engine: Engine, command_timeout: float) -> None:
    """Put every round trip of ``engine`` under a ``command_timeout``-second deadline."""
    dialect: Any = engine.dialect

    def guarded(
        method: Callable[..., Any], connection_of: Callable[..., object]
    ) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            fd = socket_fd(connection_of(*args))
            if fd is None:
                return method(*args)
            token = _watchdog.arm(fd, command_timeout)
            try:
                result = method(*args)
            except Exception as exc:
                if _watchdog.disarm(token):
                    raise _timed_out(command_timeout) from exc
                raise
            if _watchdog.disarm(token):  # answered just as the socket was shut down
                raise _timed_out(command_timeout)
            return result

        return run

    def of_context(cursor: object, statement: object, *rest: Any) -> object:
        context = rest[-1] if rest else None
        return None if context is None else context.root_connection.connection.dbapi_connection

    def of_connection(connection: object) -> object:
        return getattr(connection, "dbapi_connection", connection)

    for name in ("do_execute", "do_executemany", "do_execute_no_params"):
        setattr(dialect, name, guarded(getattr(dialect, name), of_context))
    for name in ("do_commit", "do_rollback", "do_ping"):
        setattr(dialect, name, guarded(getattr(dialect, name), of_connection))
    event.listen(engine, "handle_error", _invalidate_timed_out)


def _invalidate_timed_out(context: ExceptionContext) -> None:
    if isinstance(context.original_exception, CommandTimeoutError):
        context.is_disconnect = True  # discard this connection only: others may be fine
        context.invalidate_pool_on_disconnect = False


def _timed_out(seconds: float) -> CommandTimeoutError:
    return CommandTimeoutError(
        f"The database did not answer within command_timeout={seconds:g} seconds, so the "
        "connection was closed and discarded (the server may be frozen, overloaded or "
        "unreachable). Raise command_timeout for statements that legitimately run longer, "
        "or pass command_timeout=None to wait forever; for a limit the server enforces, use "
        "timeout= on the transaction."
    )
