"""Build the session classes a manager hands out, with the library's guards built in.

Two guards and a router hook, written once on the sync ``Session`` (which ``AsyncSession`` proxies):

- a *finished* request session refuses to begin a new transaction, so a background task or a
  streaming body that touches it gets a clear error instead of a silent new connection;
- an ``AsyncSession`` refuses to start an operation while another task is inside one, so
  ``asyncio.gather`` over a shared session fails at once with our message, not later with a
  driver error ("another operation is in progress").

- ``get_bind`` asks the session's bind look-up (``session.info[BINDS]``, a manager with
  ``binds``) and then its router (``session.info[ROUTER]``, set by a manager with read
  replicas) where each statement goes. Only the *routed* subclass (``routed=True``, for a
  manager with ``binds`` or ``replica_urls``) has it: the sessions of any other manager bind
  as their class would, with no code of ours per statement.

Each user class (``Session``, ``sqlmodel.Session``, ...) gets one cached subclass per kind
(routed or not) that only adds these guards; ``isinstance`` checks against the user's class
keep working.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from .errors import ConcurrentSessionUseError, SessionFinishedError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

FINISHED = "fastapi_dbsession.finished"
"""``session.info`` key: set to a message once a request session has ended."""

FINISHED_MESSAGE = (
    "This request session was already closed: its request transaction ended before the "
    "response was sent (committed or rolled back). Code that runs later, such as a "
    "BackgroundTask or a StreamingResponse body, must open its own unit of work: "
    '"with db.transaction() as session:" (or "async with db.async_transaction() as session:").'
)

ENDED_MESSAGE = (
    "This session belonged to a db.transaction() block or @transactional call that has ended "
    "(committed or rolled back, then closed). Keep using the session only inside its unit of "
    'work, or open a new one: "with db.transaction() as session:" / "async with '
    'db.async_transaction() as session:".'
)

ROUTER = "fastapi_dbsession.router"
"""``session.info`` key: the :class:`~fastapi_dbsession._replicas.Router` of the session."""

BINDS = "fastapi_dbsession.binds"
"""``session.info`` key: ``(mapper, clause) -> Engine | None``, the session's bind keys."""

_S = TypeVar("_S", bound=Session)
_A = TypeVar("_A", bound="AsyncSession")

# The sync methods AsyncSession's operations run (close and invalidate are left out: cleanup
# must always be able to run).
_OWNED = (
    "commit",
    "connection",
    "delete",
    "delete_all",
    "exec",  # sqlmodel.Session's (its AsyncSession.exec runs it)
    "execute",
    "flush",
    "get",
    "get_one",
    "merge",
    "merge_all",
    "refresh",
    "reset",
    "rollback",
    "scalar",
    "scalars",
)

_sync_classes: dict[tuple[type[Session], bool], type[Session]] = {}
_owned_classes: dict[type[Session], type[Session]] = {}
_async_classes: dict[tuple[type[Any], bool], type[Any]] = {}


def _named_like(base: type[Any], parent: type[Any], namespace: dict[str, object]) -> type[Any]:
    """A subclass of ``parent`` that shows ``base``'s name, qualified name and module."""
    cls = type(base.__name__, (parent,), {"__module__": base.__module__, **namespace})
    cls.__qualname__ = base.__qualname__
    return cls


def _refuse_finished(session: Session, transaction: SessionTransaction) -> None:
    message = session.info.get(FINISHED)
    if message is not None and transaction.parent is None:
        transaction.close()  # leave the session as it was: no transaction, no connection
        raise SessionFinishedError(message)


def _routed_get_bind(base: type[Session]) -> Callable[..., Any]:
    """``get_bind`` of the guarded subclass: the router, if any, chooses among the binds."""

    def get_bind(self: Any, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Any:
        binds = self.info.get(BINDS)
        if binds is not None and kw.get("bind") is None:
            bound = binds(mapper, clause)
            if bound is not None:
                return bound
        default = base.get_bind(self, mapper, clause=clause, **kw)
        router = self.info.get(ROUTER)
        if router is None or kw.get("bind") is not None:
            return default
        return router.bind_for(default, clause, flushing=self._flushing)

    return get_bind


def guarded_session_class(base: type[_S], *, routed: bool = False) -> type[_S]:
    """Return the subclass of ``base`` that refuses to restart once finished (``routed``:
    and asks the session's bind look-up and router where each statement goes)."""
    cls = _sync_classes.get((base, routed))
    if cls is None:
        cls = _named_like(base, base, {"get_bind": _routed_get_bind(base)} if routed else {})
        event.listen(cls, "after_transaction_create", _refuse_finished)
        _sync_classes[base, routed] = cls
    return cls  # type: ignore[return-value]


def _owned(name: str, method: Callable[..., object]) -> Callable[..., object]:
    """Wrap a sync ``Session`` method so that one operation at a time may be inside it.

    ``AsyncSession`` runs each operation in a greenlet of its own, so the greenlet identifies
    the operation: a call from the greenlet already inside (``get`` calling ``execute``, say)
    goes on, a call from another one is another task's operation and is refused. The check costs
    one plain call per operation, not a coroutine frame that every database round trip of the
    operation would pass through.
    """
    from greenlet import getcurrent  # type: ignore[import-untyped]  # async sessions only

    @functools.wraps(method)
    def owned(self: Any, *args: Any, **kwargs: Any) -> object:
        owner = self._fastapi_dbsession_owner
        current = getcurrent()
        if owner is current:  # a nested call of the operation already inside (get -> execute)
            return method(self, *args, **kwargs)
        if owner is not None:
            raise ConcurrentSessionUseError(
                f"AsyncSession.{name}() was called from task {_current_task_name()} while "
                "another task is still inside an operation on the same session. An "
                "AsyncSession (and its connection) serves one task at a time: do not share it "
                "across asyncio.gather(), TaskGroup or create_task(). Give each concurrent task "
                'its own session, e.g. "async with db.async_transaction() as session:", or '
                "await the operations one after another."
            )
        self._fastapi_dbsession_owner = current
        try:
            return method(self, *args, **kwargs)
        finally:
            self._fastapi_dbsession_owner = None
            if self._fastapi_dbsession_idle_waiters:
                for waiter in self._fastapi_dbsession_idle_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._fastapi_dbsession_idle_waiters.clear()

    return owned


def _current_task_name() -> str:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return repr(task.get_name()) if task is not None else "<no task>"


def _owned_session_class(base: type[_S], *, routed: bool) -> type[_S]:
    """The sync session class behind a guarded ``AsyncSession``: operations take the guard.

    Every ``AsyncSession`` operation runs one of these methods in a greenlet (``scalars`` and
    ``stream_scalars`` through ``execute`` and ``stream``, ``run_sync`` through whatever the
    function calls), so guarding them guards the ``AsyncSession``.
    """
    guarded = guarded_session_class(base, routed=routed)
    cls = _owned_classes.get(guarded)
    if cls is None:
        namespace: dict[str, object] = {
            "_fastapi_dbsession_owner": None,
            "_fastapi_dbsession_idle_waiters": (),
        }
        for name in _OWNED:
            method = getattr(guarded, name, None)
            if callable(method):
                namespace[name] = _owned(name, method)
        cls = _named_like(base, guarded, namespace)
        _owned_classes[guarded] = cls
    return cls  # type: ignore[return-value]


def guarded_async_session_class(base: type[_A], *, routed: bool = False) -> type[_A]:
    """Return the subclass of ``base`` with the concurrency and finished-session guards
    (``routed``: its sync sessions route statements, as :func:`guarded_session_class`)."""
    cls = _async_classes.get((base, routed))
    if cls is None:
        sync_class = _owned_session_class(base.sync_session_class, routed=routed)
        cls = _named_like(base, base, {"sync_session_class": sync_class})
        _async_classes[base, routed] = cls
    return cls


def has_work(session: Session) -> bool:
    """Tell whether ending ``session``'s transaction needs any I/O at all."""
    return session.in_transaction() or bool(session.new or session.dirty or session.deleted)


def is_busy(session: AsyncSession) -> bool:
    """Tell whether an operation on ``session`` is in progress (in another task: the caller,
    which is about to end the session, is not inside one)."""
    return getattr(session.sync_session, "_fastapi_dbsession_owner", None) is not None


async def wait_until_idle(session: AsyncSession) -> None:
    """Wait until no other task is inside an operation on ``session``.

    After ``asyncio.gather`` fails on a shared session, the other task may still be running a
    statement; closing under it would corrupt the session, so the request waits for it.
    """
    sync_session = session.sync_session
    while is_busy(session):
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = sync_session.__dict__.setdefault("_fastapi_dbsession_idle_waiters", [])
        waiters.append(waiter)
        await waiter
