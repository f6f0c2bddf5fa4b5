"""Provide the request session dependencies: ``db.session`` and ``db.async_session``.

``db.session`` is a plain ``async def`` dependency that depends on a ``scope="function"``
yield dependency. FastAPI closes function-scoped dependencies after the endpoint and its
response-model serialization, but *before* the response is sent, so the commit happens while
the client can still be told it failed. (A yield dependency with the default ``"request"``
scope is closed after the response is sent: a failing commit there still gives the client a
2xx.)
"""

# No "from __future__ import annotations" here: FastAPI reads these signatures at runtime.
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

from anyio import CancelScope
from fastapi import Depends, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from ._compat import FASTAPI_SHIELDS_TEARDOWN
from ._sessions import has_work
from ._units import Frame, Root, adrive, async_frames, drive, finish_root, sync_frames
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


def _scope_dependency(
    manager: "DatabaseSessionManager", *, is_async: bool
) -> Callable[..., AsyncIterator[Any]]:
    """Build the function-scoped yield dependency behind ``db.session`` / ``db.async_session``.

    One implementation for both sides; what differs is chosen here, once: the context
    variable, how the session is finished (awaited, or in a worker thread for a sync session)
    and the pool-capacity gate (sync only).
    """
    frames = async_frames if is_async else sync_frames
    finish = _finish_async if is_async else _finish_in_thread

    async def request_session_scope(
        connection: HTTPConnection, response: Response
    ) -> AsyncIterator[Any]:
        gate = None if is_async else manager._sync_capacity_gate()
        if gate is not None and not await gate.acquire(gate.timeout):
            raise PoolTimeoutError(gate.timeout_message)
        try:
            session = await manager._anew_session() if is_async else manager._new_session()
            frame = Frame(
                manager=manager,
                root=Root(session=session, owns_session=True, is_request=True),
                parent=frames.get(),
            )
            token = frames.set(frame)
            try:
                try:
                    yield session
                except BaseException:
                    with _shielded():  # a cancelled request still rolls back and closes
                        await finish(frame, False)
                    raise
                commit = should_commit(
                    _route_policy(connection, manager), None, response.status_code
                )
                with _shielded():
                    await finish(frame, commit)
            finally:
                frames.reset(token)
        finally:
            if gate is not None:
                gate.release()

    return request_session_scope


_ALREADY_SHIELDED = nullcontext()


def _shielded() -> AbstractContextManager[object]:
    """Shield the teardown from cancellation, unless FastAPI already does."""
    return _ALREADY_SHIELDED if FASTAPI_SHIELDS_TEARDOWN else CancelScope(shield=True)


async def _finish_in_thread(frame: Frame, commit: bool) -> None:
    assert frame.root is not None
    flow = finish_root(frame.root, frame, commit=commit)
    if has_work(frame.root.session) or frame.on_commit or frame.on_rollback:
        await run_in_threadpool(drive, flow)
    else:  # nothing to send and no hooks: skip the thread hop
        drive(flow)


async def _finish_async(frame: Frame, commit: bool) -> None:
    assert frame.root is not None
    await adrive(finish_root(frame.root, frame, commit=commit))


def session_dependency(manager: "DatabaseSessionManager") -> Callable[..., Awaitable[Session]]:
    """Build ``db.session``: the request's sync session, finished before the response."""
    scope = _scope_dependency(manager, is_async=False)

    async def session(request_session: Session = Depends(scope, scope="function")) -> Session:
        return request_session

    return session


def async_session_dependency(
    manager: "DatabaseSessionManager",
) -> "Callable[..., Awaitable[AsyncSession]]":
    """Build ``db.async_session``: the request's AsyncSession, finished before the response."""
    scope = _scope_dependency(manager, is_async=True)

    async def async_session(
        request_session: Any = Depends(scope, scope="function"),
    ) -> "AsyncSession":
        return request_session  # type: ignore[no-any-return]

    return async_session
