"""Provide the request session dependencies: ``db.session`` and ``db.async_session``.

The request session ends where FastAPI ends ``scope="function"`` dependencies: after the
endpoint and its response-model serialization, but *before* the response is sent, so the commit
happens while the client can still be told it failed. (A yield dependency with the default
``"request"`` scope is closed after the response is sent: a failing commit there still gives the
client a 2xx.)
"""

# No "from __future__ import annotations" here: FastAPI reads these signatures at runtime.
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from contextlib import AsyncExitStack
from contextvars import Token
from types import CodeType
from typing import TYPE_CHECKING, Any

import fastapi.routing
import sqlalchemy.exc
from fastapi import Depends, HTTPException, Response
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from ._capacity import CapacityGate
from ._commit_group import GROUP_KEYS, Arrival, CommitGroup, finish, join
from ._database import Database
from ._endpoints import EndpointGuard, register
from ._frames import Frame, Root, frames_of
from ._holds import asked_by, hold_of
from ._outage import unavailable_cause, unavailable_message
from ._recording import QueryStats, request_label
from ._replicas import Writes, enter_request
from .errors import DatabaseUnavailableError, PoolTimeoutError
from .propagation import CommitPolicy, should_commit

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

logger = logging.getLogger(__name__)

_SCOPE_KEY = "fastapi_dbsession.commit_policy"
_WRITES_KEY = "fastapi_dbsession.writes"

RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` of a request that found no free connection: the overload is short-lived."""


class PoolTimeoutResponse(PoolTimeoutError, HTTPException):
    """A :class:`PoolTimeoutError` that FastAPI answers with 503 and ``Retry-After``.

    Raised to the app instead of the plain error when a *request* found no free connection:
    FastAPI's ``HTTPException`` handler turns it into ``503 Service Unavailable``, unless the
    app registers its own handler for ``PoolTimeoutError`` or ``DBSessionError``, which wins
    (Starlette looks handlers up along the class's MRO, ours first). The body never names the
    database; the message (for logs) does, with the password masked.
    """

    def __init__(self, message: str) -> None:
        PoolTimeoutError.__init__(self, message)
        HTTPException.__init__(
            self,
            status_code=503,
            detail="The database is busy: no connection became free in time. Retry later.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def __str__(self) -> str:
        return str(self.args[0])


class DatabaseUnavailableResponse(DatabaseUnavailableError, HTTPException):
    """A :class:`DatabaseUnavailableError` that FastAPI answers with 503 and ``Retry-After``.

    Raised to the app when a request failed because the database could not be reached: a
    connect failed (a failover: the old primary is gone, the standby not yet promoted) or the
    connection was lost under a statement. The request was rolled back, nothing committed, so
    the client may retry. An app handler for ``DatabaseUnavailableError`` or ``DBSessionError``
    wins, as for :class:`PoolTimeoutResponse`.
    """

    def __init__(self, message: str) -> None:
        DatabaseUnavailableError.__init__(self, message)
        HTTPException.__init__(
            self,
            status_code=503,
            detail="The database is unavailable. Retry shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def __str__(self) -> str:
        return str(self.args[0])


BUSY_LOG_INTERVAL = 10.0
"""Seconds between two "answered 503" log lines of one kind; the ones in between are counted."""
_log_503_state: dict[str, tuple[float, int]] = {}  # kind -> (last line, lines held back)


def _log_503(kind: str, message: str) -> None:
    """Log an "answered 503" line, at most one per kind every ``BUSY_LOG_INTERVAL`` seconds."""
    now = time.monotonic()
    last, quiet = _log_503_state.get(kind, (-BUSY_LOG_INTERVAL, 0))
    if now - last >= BUSY_LOG_INTERVAL:
        _log_503_state[kind] = (now, 0)
        more = f" ({quiet} more since the last line)" if quiet else ""
        logger.warning("answered 503 with Retry-After: %s%s", message, more)
    else:
        _log_503_state[kind] = (last, quiet + 1)


def _busy(message: str) -> PoolTimeoutResponse:
    """The 503 for a request that found no free connection, logged (rate-limited)."""
    _log_503("busy", message)
    return PoolTimeoutResponse(message)


def _as_response(database: Database, error: BaseException, *, is_async: bool) -> BaseException:
    """``error`` itself, or its 503 form: no connection became free in time, or the database
    could not be reached."""
    if isinstance(error, (PoolTimeoutResponse, DatabaseUnavailableResponse)):
        return error
    unavailable = unavailable_cause(error)
    if unavailable is not None:
        message = unavailable_message(unavailable)
        _log_503("unavailable", message)
        return DatabaseUnavailableResponse(message)
    if isinstance(error, PoolTimeoutError):
        return _busy(str(error))
    if isinstance(error, sqlalchemy.exc.TimeoutError):  # the pool's own checkout timeout
        return _busy(str(database.pool_timeout_error(is_async=is_async)))
    return error


def _function_stack_key() -> str | None:
    """The request-scope key of FastAPI's function-scoped exit stack, if this FastAPI has it.

    FastAPI (0.121 and later) keeps the exit stack that ends ``scope="function"`` dependencies
    in ``scope["fastapi_function_astack"]``. The key is not public API, so it is looked for in
    ``fastapi.routing``'s code, where FastAPI sets it, rather than assumed: if a later FastAPI
    renames it, the request dependencies fall back to a ``scope="function"`` yield dependency.
    """
    key = "fastapi_function_astack"

    def sets_key(code: CodeType) -> bool:
        return any(
            const == key or (isinstance(const, CodeType) and sets_key(const))
            for const in code.co_consts
        )

    for function in (fastapi.routing.request_response, fastapi.routing.websocket_session):
        if not sets_key(function.__code__):
            return None
    return key


FUNCTION_STACK_KEY = _function_stack_key()


_RouteRule = tuple[CommitPolicy, Container[int] | None]


def commit_policy_dependency(
    database: Database, policy: CommitPolicy, statuses: Container[int] | None = None
) -> Callable[[HTTPConnection], Awaitable[None]]:
    """Build the route dependency that overrides ``database``'s commit rule for one route.

    ``statuses`` None keeps the manager's ``commit_statuses``.
    """

    async def commit_policy(connection: HTTPConnection) -> None:
        rule = (policy, database.config.commit_statuses if statuses is None else statuses)
        connection.scope.setdefault(_SCOPE_KEY, {})[id(database)] = rule

    return commit_policy


def _route_rule(connection: HTTPConnection, database: Database) -> _RouteRule:
    chosen: dict[int, _RouteRule] | None = connection.scope.get(_SCOPE_KEY)
    if chosen is not None and (rule := chosen.get(id(database))) is not None:
        return rule
    config = database.config
    return config.commit_policy, config.commit_statuses


def _declared_status(connection: HTTPConnection) -> int | None:
    """The route's declared status code (when the injected ``Response`` has none)."""
    declared = getattr(connection.scope.get("route"), "status_code", None)
    return declared if isinstance(declared, int) else None


def _enter_writes(connection: HTTPConnection, response: Response, database: Database) -> None:
    """Give the request its record of writes (read-your-writes across its sessions), once.

    Called for a manager with read replicas only."""
    if database.is_bound:
        return
    store: dict[int, Writes] = connection.scope.setdefault(_WRITES_KEY, {})
    enter_request(store)
    if id(database) in store:
        return
    writes = store[id(database)] = Writes()
    sticky = database.config.sticky_window
    if sticky is None:
        return
    carried = connection.cookies.get(sticky.cookie) if sticky.cookie else None
    if sticky.header:
        carried = connection.headers.get(sticky.header)
    writes.wrote = sticky.is_open(carried, time.time())

    def mark_client() -> None:  # the first write of this request: open the client's window
        until = f"{time.time() + sticky.seconds:.3f}"
        if sticky.cookie:
            # Max-Age counts whole seconds (and cookie jars round "now" down): one more second
            # than the window; the value itself is what decides (StickyWindow.is_open).
            max_age = math.ceil(sticky.seconds) + 1
            response.set_cookie(sticky.cookie, until, max_age=max_age, httponly=True)
        else:
            response.headers[sticky.header or ""] = until

    writes.on_first_write = mark_client


_Opened = tuple[
    Any,
    Frame,
    "Token[Frame | None] | None",
    CapacityGate | None,
    "tuple[QueryStats, Token[QueryStats | None]] | None",
]


class _RequestUnit:
    """Open and end the request transaction of one database, for one side (sync or async).

    Both ways of hooking into FastAPI (below) use this one implementation. A read unit
    (``db.read_session``) never commits and is not the context's unit: ``@transactional`` and
    ``db.transaction()`` never join it.
    """

    __slots__ = ("database", "dependency", "frames", "is_async", "is_read")

    def __init__(self, database: Database, *, is_async: bool, is_read: bool = False) -> None:
        self.database = database
        self.is_async = is_async
        self.is_read = is_read
        self.frames = frames_of(is_async=is_async)
        self.dependency: Callable[..., Any] | None = None  # what routes name in Depends()

    async def open(self, connection: HTTPConnection, response: Response) -> _Opened:
        """Take a pool permit (sync), make the session and make it the context's unit."""
        database = self.database
        if database.config.replica_urls:
            _enter_writes(connection, response, database)
        read = self.is_read or _route_rule(connection, database)[0] == "read_only"
        gate = None if self.is_async else database.capacity_gate()
        if gate is not None:
            observers = database.watchers.gate_observers
            if observers:
                await _observed_pass(gate, observers)
            elif not await gate.acquire(gate.timeout):  # the hot path: no coroutine of ours
                raise _busy(gate.timeout_message)
        session: Any
        try:
            if self.is_async:
                session = await database.async_new_session(read=read)
            else:
                session = database.new_session(read=read)
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        frame = Frame(
            database=database,
            root=Root(session=session, owns_session=True, is_request=True),
            parent=self.frames.get(),
        )
        token = None
        if not self.is_read:  # a read session never commits: it ends on its own
            token = self.frames.set(frame)
            if connection.scope.setdefault(GROUP_KEYS[self.is_async], frame) is not frame:
                join(connection.scope, frame, is_async=self.is_async)  # a second database
        recording = None
        if database.watchers.recorder is not None:
            recording = database.watchers.recorder.start(_label(connection), connection.scope)
        if database.watchers.hold_threshold is not None:
            self._describe_hold(session, connection)
        return session, frame, token, gate, recording

    def _describe_hold(self, session: object, connection: HTTPConnection) -> None:
        """Name the request and the dependency that asked for its session, for hold warnings."""
        hold = hold_of(session)
        if hold is None:
            return
        hold.request = _label(connection)
        route, dependency = connection.scope.get("route"), self.dependency
        hold.describe_origin = lambda: asked_by(route, dependency)

    async def end(
        self,
        opened: _Opened,
        connection: HTTPConnection,
        response: Response,
        error: BaseException | None,
    ) -> None:
        """Commit or roll back (by the route's policy and what happened), close, run hooks.

        Raises:
            PoolTimeoutResponse: ``error`` was a pool checkout timeout: the client gets a 503.
            DatabaseUnavailableResponse: the endpoint failed because the database could not
                be reached (a failover, a restart): rolled back, the client gets a 503.
        """
        _, frame, token, gate, recording = opened
        group = None if self.is_read else connection.scope.get(GROUP_KEYS[self.is_async])
        if type(group) is not CommitGroup:
            group = None  # this request's only session on this side: it ends alone
        released = False
        try:
            commit = error is None and self._commits(connection, response)
            if group is not None:  # several databases: end them together
                release = functools.partial(self._release, gate, recording)
                released = True  # the group releases every arrival's permit and recording
                arrival = Arrival(self.database, frame, commit, release)
                await group.end(arrival, is_async=self.is_async)
            else:
                await finish(frame, commit, is_async=self.is_async)
            if error is None:
                logger.debug("request session %s", "committed" if commit else "rolled back")
        finally:
            if token is not None:
                self.frames.reset(token)
            if not released:  # (self._release, inline: the hot path)
                if gate is not None:
                    gate.release()
                if recording is not None:
                    self._release(None, recording)
        if error is not None:
            replacement = _as_response(self.database, error, is_async=self.is_async)
            if replacement is not error:
                raise replacement from error

    def _commits(self, connection: HTTPConnection, response: Response) -> bool:
        """Whether the request's transaction commits (the endpoint raised nothing)."""
        if self.is_read:
            return False
        policy, statuses = _route_rule(connection, self.database)
        status = response.status_code  # set on the injected Response, else the route's
        status = _declared_status(connection) if status is None else status
        return should_commit(policy, None, status, statuses)

    def _release(self, gate: CapacityGate | None, recording: Any) -> None:
        if gate is not None:
            gate.release()
        if recording is not None:
            assert self.database.watchers.recorder is not None
            self.database.watchers.recorder.stop(*recording)


async def _observed_pass(
    gate: CapacityGate, observers: list[Callable[[float, bool], object]]
) -> None:
    """Take a permit from the pool gate, telling the observers (metrics) how long it took."""
    started = time.perf_counter()
    acquired = await gate.acquire(gate.timeout)
    waited = time.perf_counter() - started
    for observer in observers:
        observer(waited, acquired)
    if not acquired:
        raise _busy(gate.timeout_message)


def _label(connection: HTTPConnection) -> str:
    """``GET /items/{item_id}``: the request's method and route, for logs."""
    scope = connection.scope
    return request_label(
        scope.get("method"), getattr(scope.get("route"), "path", None), scope["path"]
    )


def _request_dependency(
    database: Database, *, is_async: bool, is_read: bool = False
) -> Callable[..., Awaitable[Any]]:
    """Build ``db.session`` / ``db.async_session``.

    Where FastAPI keeps its function-scoped exit stack in the request scope (0.121 and later,
    checked once at import), the dependency is one plain ``async def`` that opens the session
    and pushes its ending onto that stack: the same moment a ``scope="function"`` yield
    dependency ends, without a second dependency level or a generator per request. Otherwise
    it is a plain dependency over a ``scope="function"`` yield dependency.
    """
    unit = _RequestUnit(database, is_async=is_async, is_read=is_read)
    guard = EndpointGuard() if is_async else None
    if FUNCTION_STACK_KEY is None:
        return _guarded(_nested_dependency(unit, guard), guard)

    async def request_session(connection: HTTPConnection, response: Response) -> Any:
        if guard is not None:
            guard.check(connection.scope)
        stack: AsyncExitStack = connection.scope[FUNCTION_STACK_KEY]
        opened = await unit.open(connection, response)
        stack.push_async_exit(_Ending(unit, opened, connection, response))
        return opened[0]

    unit.dependency = request_session
    return _guarded(request_session, guard)


class _Ending:
    """The exit callback a request session pushes onto FastAPI's function-scoped exit stack.

    An object with ``__aexit__`` rather than a closure: ``AsyncExitStack.push_async_exit``
    looks for ``__aexit__`` first, and a plain function costs it a caught ``AttributeError``
    on every request.
    """

    __slots__ = ("connection", "opened", "response", "unit")

    def __init__(
        self, unit: _RequestUnit, opened: _Opened, connection: HTTPConnection, response: Response
    ) -> None:
        self.unit, self.opened, self.connection, self.response = unit, opened, connection, response

    async def __aenter__(self) -> "_Ending":  # (an async context manager to type checkers)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: object
    ) -> bool:
        await self.unit.end(self.opened, self.connection, self.response, error)
        return False  # never swallow what the endpoint raised


def _guarded(
    dependency: Callable[..., Awaitable[Any]], guard: "EndpointGuard | None"
) -> Callable[..., Awaitable[Any]]:
    """Tell ``guard`` which dependency it watches for (and ``check_endpoints`` the guard)."""
    if guard is not None:
        guard.dependency = dependency
        register(dependency, guard)
    return dependency


def _nested_dependency(
    unit: _RequestUnit, guard: "EndpointGuard | None"
) -> Callable[..., Awaitable[Any]]:
    """The portable form: a plain dependency over a function-scoped yield dependency."""

    async def request_session_scope(
        connection: HTTPConnection, response: Response
    ) -> AsyncIterator[Any]:
        if guard is not None:
            guard.check(connection.scope)
        opened = await unit.open(connection, response)
        try:
            yield opened[0]
        except BaseException as error:
            await unit.end(opened, connection, response, error)
            raise
        await unit.end(opened, connection, response, None)

    async def request_session(
        session: Any = Depends(request_session_scope, scope="function"),
    ) -> Any:
        return session

    unit.dependency = request_session
    return request_session


def session_dependency(database: Database) -> Callable[..., Awaitable[Session]]:
    """Build ``db.session``: the request's sync session, finished before the response."""
    return _request_dependency(database, is_async=False)


def async_session_dependency(database: Database) -> "Callable[..., Awaitable[AsyncSession]]":
    """Build ``db.async_session``: the request's AsyncSession, finished before the response."""
    return _request_dependency(database, is_async=True)


def read_session_dependency(database: Database) -> Callable[..., Awaitable[Session]]:
    """Build ``db.read_session``: a read-only request session (a replica when there are some)."""
    return _request_dependency(database, is_async=False, is_read=True)


def async_read_session_dependency(database: Database) -> "Callable[..., Awaitable[AsyncSession]]":
    """Build ``db.async_read_session``: the async twin of ``db.read_session``."""
    return _request_dependency(database, is_async=True, is_read=True)
