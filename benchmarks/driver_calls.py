"""Count the database driver's protocol calls inside a server: an ASGI wrapper around an app.

Served by the round-trip scenario only (never in a timed run) as ``driver_calls:app`` with
``BENCH_COUNTED_APP=apps.<module>:app``. Importing it patches the drivers, before the app is
imported, so that every statement sent is counted and named:

- psycopg 3: each statement sent (``BaseConnection._exec_command``: BEGIN, COMMIT, ROLLBACK, ...;
  ``BaseCursor._execute_send`` / ``_send_query_prepared``: queries; ``_send_prepare``: PREPARE;
  ``_deallocate``: a protocol-level Close, or DEALLOCATE through ``_exec_command``);
- asyncpg: each call of the connection's protocol that talks to the server (``query``,
  ``prepare``, ``bind_execute``, ``bind_execute_many``, ``bind``, ``execute``,
  ``close_statement``, ``copy_in``, ``copy_out``), through a proxy around the protocol.

Without pipelining each of these is one round trip. Two extra routes, answered before the app
sees the request:

- ``GET /__bench/driver-calls?since=N``: ``{"count": total, "calls": [names from the N-th on],
  "connects": connections opened so far}``;
- ``POST /__bench/flush-statistics``: on every open driver connection the app opened, run
  ``SELECT pg_stat_force_next_flush()`` (PostgreSQL 15+; not counted) so that the server's
  statistics include all its transactions at once; answers ``{"flushed": connections}`` (each
  flush is one transaction of its own on the server), or ``{"busy": n}`` and flushes nothing
  while n connections are still in a transaction (ask again).

Imports only the standard library and whichever of the drivers is installed: it runs in every
benchmark venv.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# A backend only flushes when it has pending table statistics (PostgreSQL's pgstat_report_stat
# returns early otherwise, database counters and all): the catalog scan makes sure it has.
FLUSH_SQL = "SELECT pg_stat_force_next_flush(), (SELECT 1 FROM pg_catalog.pg_namespace LIMIT 1)"


class Counter:
    """Every statement the drivers sent, by name (``BEGIN``, ``SELECT 1``, ``SELECT``, ...)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.connects = 0

    def opened(self, connection: Any) -> None:
        self.connections.add(connection)
        self.connects += 1

    def record(self, kind: str, statement: object) -> None:
        if not self.paused:
            self.calls.append(f"{kind}{name_of(statement)}")

    @contextmanager
    def pause(self) -> Iterator[None]:
        self.paused = True
        try:
            yield
        finally:
            self.paused = False


COUNTER = Counter()


def name_of(statement: object) -> str:
    """A short name: the whole statement when short (``SELECT 1``, ``;``), else its first word."""
    statement = getattr(statement, "query", statement)  # psycopg's PostgresQuery, asyncpg's state
    if isinstance(statement, bytes):
        statement = statement.decode(errors="replace")
    text = " ".join(str(statement).split())
    if len(text) <= 10:
        return text.rstrip(";") or ";"
    return text.split(" ", 1)[0].rstrip(";").upper()


# -- psycopg 3 -----------------------------------------------------------------------------


def _patch_psycopg() -> None:
    try:
        from psycopg import _connection_base, _cursor_base
    except ImportError:
        return
    connection_class = _connection_base.BaseConnection
    cursor_class = _cursor_base.BaseCursor

    original_init = connection_class.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        COUNTER.opened(self)

    connection_class.__init__ = __init__  # type: ignore[method-assign]

    original_command = connection_class._exec_command

    @functools.wraps(original_command)
    def _exec_command(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTER.record("", command)
        return (yield from original_command(self, command, *args, **kwargs))

    connection_class._exec_command = _exec_command  # type: ignore[method-assign]

    original_deallocate = connection_class._deallocate

    @functools.wraps(original_deallocate)
    def _deallocate(self: Any, name: Any) -> Any:
        if name is not None and _connection_base._HAS_SEND_CLOSE:  # else via _exec_command
            COUNTER.record("CLOSE ", name)
        return (yield from original_deallocate(self, name))

    connection_class._deallocate = _deallocate  # type: ignore[method-assign]

    def counted(method: Callable[..., Any], kind: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            query = args[-1] if kind == "PREPARE " else (args[1] if len(args) > 1 else args[0])
            COUNTER.record(kind, query)
            return method(self, *args, **kwargs)

        return wrapper

    # _execute_send(query), _send_query_prepared(name, query), _send_prepare(name, query)
    cursor_class._execute_send = counted(cursor_class._execute_send, "")  # type: ignore[method-assign]
    cursor_class._send_query_prepared = counted(cursor_class._send_query_prepared, "")  # type: ignore[method-assign]
    cursor_class._send_prepare = counted(cursor_class._send_prepare, "PREPARE ")  # type: ignore[method-assign]


def _psycopg_idle(connection: Any) -> bool:
    from psycopg import pq

    return bool(connection.info.transaction_status == pq.TransactionStatus.IDLE)


def _flush_psycopg(connection: Any) -> None:
    """One transaction: the simple query protocol, never prepared, in autocommit as SQLAlchemy's
    pre-ping does it (a rollback would make psycopg forget its prepared statements)."""
    autocommit = connection.autocommit
    connection.autocommit = True
    try:
        connection.execute(FLUSH_SQL, prepare=False)
    finally:
        connection.autocommit = autocommit


# -- asyncpg -------------------------------------------------------------------------------

ASYNCPG_CALLS = {
    # method: (position, name) of the parameter that holds the statement or its prepared state
    "query": (0, "query"),
    "prepare": (1, "query"),
    "bind_execute": (0, "state"),
    "bind_execute_many": (0, "state"),
    "bind": (0, "state"),
    "execute": (0, "state"),
    "close_statement": (0, "state"),
    "copy_in": (0, "copy_stmt"),
    "copy_out": (0, "copy_stmt"),
}


class CountingProtocol:
    """Stands in for an asyncpg connection's protocol; counts the calls that reach the server."""

    def __init__(self, protocol: Any) -> None:
        object.__setattr__(self, "_bench_protocol", protocol)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._bench_protocol, name)
        if name not in ASYNCPG_CALLS:
            return attribute
        position, parameter = ASYNCPG_CALLS[name]
        kind = "PREPARE " if name == "prepare" else ("CLOSE " if name == "close_statement" else "")

        def counted(*args: Any, **kwargs: Any) -> Any:
            statement = args[position] if len(args) > position else kwargs.get(parameter, name)
            COUNTER.record(kind, statement)
            return attribute(*args, **kwargs)

        return counted

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._bench_protocol, name, value)


def _patch_asyncpg() -> None:
    try:
        from asyncpg import connection as asyncpg_connection
    except ImportError:
        return
    connection_class = asyncpg_connection.Connection
    original_init = connection_class.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, protocol: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, protocol, *args, **kwargs)
        self._protocol = CountingProtocol(self._protocol)
        COUNTER.opened(self)

    connection_class.__init__ = __init__  # type: ignore[method-assign]


def _is_asyncpg(connection: Any) -> bool:
    return hasattr(connection, "is_in_transaction")


def _open(connection: Any) -> bool:
    return not (connection.is_closed() if _is_asyncpg(connection) else connection.closed)


def _idle(connection: Any) -> bool:
    if _is_asyncpg(connection):
        return not connection.is_in_transaction()
    return _psycopg_idle(connection)


async def flush_statistics() -> dict[str, int]:
    """Flush the statistics of every open connection the drivers opened, if all are idle.

    Returns ``{"flushed": n}`` (n transactions added on the server, one per connection), or
    ``{"busy": n}`` without flushing anything while n connections are still in a transaction.
    """
    connections = [connection for connection in list(COUNTER.connections) if _open(connection)]
    busy = sum(not _idle(connection) for connection in connections)
    if busy:
        return {"busy": busy}
    with COUNTER.pause():
        for connection in connections:
            if _is_asyncpg(connection):  # the simple query protocol: one transaction
                await connection.execute(FLUSH_SQL)
            else:
                _flush_psycopg(connection)
    return {"flushed": len(connections)}


# -- the ASGI wrapper ----------------------------------------------------------------------

_patch_psycopg()
_patch_asyncpg()
_module, _, _attribute = os.environ["BENCH_COUNTED_APP"].partition(":")
counted_app: Any = getattr(importlib.import_module(_module), _attribute or "app")


async def _answer(send: Any, body: object, status: int = 200) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The counted app, plus the two ``/__bench/`` routes."""
    path = scope.get("path", "") if scope["type"] == "http" else ""
    if path == "/__bench/driver-calls":
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        since = int(query.get("since", "0"))
        count = len(COUNTER.calls)
        calls = COUNTER.calls[since:count]
        await _answer(send, {"count": count, "calls": calls, "connects": COUNTER.connects})
    elif path == "/__bench/flush-statistics":
        try:
            await _answer(send, await flush_statistics())
        except Exception as exc:  # reported to the scenario, which marks the run invalid
            await _answer(send, {"problem": f"{type(exc).__name__}: {exc}"}, status=500)
    else:
        await counted_app(scope, receive, send)
