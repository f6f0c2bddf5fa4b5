"""Provide the request session dependencies: ``db.session`` and ``db.async_session``.

The request session ends where FastAPI ends ``scope="function"`` dependencies: after the
endpoint and its response-model serialization, but *before* the response is sent, so the commit
happens while the client can still be told it failed. (A yield dependency with the default
``"request"`` scope is closed after the response is sent: a failing commit there still gives the
client a 2xx.)
"""

# No "from __future__ import annotations" here: FastAPI reads these signatures at runtime.
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from contextvars import Token
from typing import TYPE_CHECKING, Any, Literal

from anyio import CancelScope
from fastapi import Depends, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from ._capacity import CapacityGate
from ._compat import FUNCTION_STACK_KEY
from ._sessions import has_work, is_busy
from ._units import (
    GREENLET_STEPS,
    Frame,
    Root,
    adrive,
    async_frames,
    drive,
    finish_root,
    sync_frames,
)
from .errors import ConfigurationError, PoolTimeoutError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .manager import DatabaseSessionManager

logger = logging.getLogger(__name__)

CommitPolicy = Literal["commit", "manual", "read_only"]
"""What a request session does when its endpoint succeeds: ``"commit"`` (the default),
``"manual"`` (never commit for you; roll back what is left) or ``"read_only"`` (always roll
back)."""
COMMIT_POLICIES: tuple[CommitPolicy, ...] = ("commit", "manual", "read_only")

_SCOPE_KEY = "fastapi_dbsession.commit_policy"


def check_policy(policy: object, *, argument: str) -> CommitPolicy:
    """Return ``policy`` if it names a commit policy, else raise a clear error."""
    for known in COMMIT_POLICIES:
        if policy == known:
            return known
    raise ConfigurationError(
        f"{argument}={policy!r} is not a commit policy. Use one of "
        f"{', '.join(map(repr, COMMIT_POLICIES))}: 'commit' commits when the endpoint succeeds, "
        "'manual' never commits for you, 'read_only' always rolls back."
    )


def should_commit(policy: CommitPolicy, error: BaseException | None, status: int | None) -> bool:
    """Decide the fate of a request transaction; no I/O.

    Args:
        policy: The route's commit policy.
        error: What the endpoint or a dependency raised, if anything.
        status: The status code set on the injected ``Response``, if any.
    """
    return policy == "commit" and error is None and (status is None or status < 400)


def commit_policy_dependency(
    manager: "DatabaseSessionManager", policy: CommitPolicy
) -> Callable[[HTTPConnection], Awaitable[None]]:
    """Build the route dependency that overrides ``manager``'s commit policy for one route."""

    async def commit_policy(connection: HTTPConnection) -> None:
        connection.scope.setdefault(_SCOPE_KEY, {})[id(manager)] = policy

    return commit_policy


def _route_policy(connection: HTTPConnection, manager: "DatabaseSessionManager") -> CommitPolicy:
    chosen: dict[int, CommitPolicy] | None = connection.scope.get(_SCOPE_KEY)
    if chosen is None:
        return manager.default_commit_policy
    return chosen.get(id(manager), manager.default_commit_policy)


class _RequestUnit:
    """Open and end the request transaction of one manager, for one side (sync or async).

    Both ways of hooking into FastAPI (below) use this one implementation.
    """

    __slots__ = ("frames", "is_async", "manager")

    def __init__(self, manager: "DatabaseSessionManager", *, is_async: bool) -> None:
        self.manager = manager
        self.is_async = is_async
        self.frames = async_frames if is_async else sync_frames

    async def open(self) -> tuple[Any, Frame, Token[Frame | None], CapacityGate | None]:
        """Take a pool permit (sync), make the session and make it the context's unit."""
        manager = self.manager
        gate = None if self.is_async else manager._sync_capacity_gate()
        if gate is not None and not await gate.acquire(gate.timeout):
            raise PoolTimeoutError(gate.timeout_message)
        session: Any
        try:
            if self.is_async:
                session = await manager._anew_session()
            else:
                session = manager._new_session()
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        frame = Frame(
            manager=manager,
            root=Root(session=session, owns_session=True, is_request=True),
            parent=self.frames.get(),
        )
        return session, frame, self.frames.set(frame), gate

    async def end(
        self,
        opened: tuple[Any, Frame, Token[Frame | None], CapacityGate | None],
        connection: HTTPConnection,
        response: Response,
        error: BaseException | None,
    ) -> None:
        """Commit or roll back (by the route's policy and what happened), close, run hooks."""
        _, frame, token, gate = opened
        try:
            commit = error is None and should_commit(
                _route_policy(connection, self.manager), None, response.status_code
            )
            await _finish(frame, commit, is_async=self.is_async)
            if error is None:
                logger.debug("request session %s", "committed" if commit else "rolled back")
        finally:
            self.frames.reset(token)
            if gate is not None:
                gate.release()


def _request_dependency(
    manager: "DatabaseSessionManager", *, is_async: bool
) -> Callable[..., Awaitable[Any]]:
    """Build ``db.session`` / ``db.async_session``.

    Where FastAPI keeps its function-scoped exit stack in the request scope (0.121 and later,
    checked once at import), the dependency is one plain ``async def`` that opens the session
    and pushes its ending onto that stack: the same moment a ``scope="function"`` yield
    dependency ends, without a second dependency level or a generator per request. Otherwise
    it is a plain dependency over a ``scope="function"`` yield dependency.
    """
    unit = _RequestUnit(manager, is_async=is_async)
    if FUNCTION_STACK_KEY is None:
        return _nested_dependency(unit)

    async def request_session(connection: HTTPConnection, response: Response) -> Any:
        stack: AsyncExitStack = connection.scope[FUNCTION_STACK_KEY]
        opened = await unit.open()

        async def end(
            kind: type[BaseException] | None, error: BaseException | None, traceback: object
        ) -> bool:
            await unit.end(opened, connection, response, error)
            return False  # never swallow what the endpoint raised

        stack.push_async_exit(end)
        return opened[0]

    return request_session


def _nested_dependency(unit: _RequestUnit) -> Callable[..., Awaitable[Any]]:
    """The portable form: a plain dependency over a function-scoped yield dependency."""

    async def request_session_scope(
        connection: HTTPConnection, response: Response
    ) -> AsyncIterator[Any]:
        opened = await unit.open()
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

    return request_session


def _needs_io(frame: Frame) -> bool:
    """Whether ending ``frame``'s transaction sends anything, runs hooks or must wait for a
    task still inside the session; if not, it ends right here, without I/O."""
    assert frame.root is not None
    session = frame.root.session
    sync_session = getattr(session, "sync_session", session)
    return (
        has_work(sync_session)
        or bool(frame.on_commit or frame.on_rollback)
        or (sync_session is not session and is_busy(session))
    )


async def _finish(frame: Frame, commit: bool, *, is_async: bool) -> None:
    """End the request transaction: in a worker thread (sync) or one greenlet (async)."""
    assert frame.root is not None
    flow = finish_root(frame.root, frame, commit=commit)
    if not _needs_io(frame):  # no thread hop, no greenlet
        drive(flow, steps=GREENLET_STEPS if is_async else None)
        return
    with CancelScope(shield=True):  # a cancelled request still rolls back and closes
        if is_async:
            await adrive(flow)
        else:
            await run_in_threadpool(drive, flow)


def session_dependency(manager: "DatabaseSessionManager") -> Callable[..., Awaitable[Session]]:
    """Build ``db.session``: the request's sync session, finished before the response."""
    return _request_dependency(manager, is_async=False)


def async_session_dependency(
    manager: "DatabaseSessionManager",
) -> "Callable[..., Awaitable[AsyncSession]]":
    """Build ``db.async_session``: the request's AsyncSession, finished before the response."""
    return _request_dependency(manager, is_async=True)
