"""Track the units of work active in a context: frames, their transactions, and look-ups.

Each unit of work (a request session, ``db.transaction()``, a ``@transactional`` call) pushes
a :class:`Frame` onto a context variable (one for sync code, one for async code); frames chain
through ``parent`` across databases, and the frames that take part in one transaction share
its :class:`Root`. This module only holds that data and answers questions about it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._sessions import has_work
from .errors import NoActiveTransactionError
from .propagation import Active

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session, SessionTransaction

    from ._database import Database

Hook = Callable[[], object]


@dataclass(eq=False, slots=True)
class Root:
    """One transaction on one session, shared by every frame that takes part in it."""

    session: Session | AsyncSession
    owns_session: bool  # close it at the end (False: a request session adopted by a unit)
    is_request: bool = False
    external: bool = False  # a session the caller passed in and manages itself
    read_only: bool = False
    reset_sql: str | None = None  # run before the transaction ends (MariaDB statement timeout)
    ended: bool = False  # finished: frames still pointing here (context copies) are stale


@dataclass(eq=False, slots=True)
class Frame:
    """One unit of work in a context; frames chain through ``parent`` (any database)."""

    database: Database | None
    root: Root | None  # None: a unit that runs without a transaction
    parent: Frame | None
    savepoint: SessionTransaction | None = None
    on_commit: list[tuple[Hook, bool]] = field(default_factory=list)
    on_rollback: list[tuple[Hook, bool]] = field(default_factory=list)
    owner: Frame | None = None  # the frame whose hooks this one's hooks join (JOIN frames)
    plain_session: Session | AsyncSession | None = None  # a unit without a transaction's
    doomed: str | None = None  # rollback-only: why a joined unit failed (root/savepoint frames)

    @property
    def hooks_frame(self) -> Frame:
        return self.owner or self

    @property
    def session(self) -> Session | AsyncSession:
        """The session the unit's body works on."""
        session = self.plain_session if self.root is None else self.root.session
        assert session is not None
        return session


sync_frames: ContextVar[Frame | None] = ContextVar("fastapi_dbsession.sync_frame", default=None)
async_frames: ContextVar[Frame | None] = ContextVar("fastapi_dbsession.async_frame", default=None)


def frames_of(*, is_async: bool) -> ContextVar[Frame | None]:
    """The context variable of one side."""
    return async_frames if is_async else sync_frames


def sync_view(session: Any) -> Session:
    """The sync ``Session`` behind an ``AsyncSession`` (a sync session is its own)."""
    return getattr(session, "sync_session", session)  # type: ignore[no-any-return]


def active_frame(frames: ContextVar[Frame | None], database: Database | None) -> Frame | None:
    """The innermost frame of ``database`` (of any if None) that has a transaction."""
    frame = frames.get()
    while frame is not None:
        if frame.root is not None and frame.root.ended:
            frame = frame.parent  # a finished transaction seen through a copied context
        elif database is None or frame.database is database:
            return frame if frame.root is not None else None  # NOT_SUPPORTED suspends
        else:
            frame = frame.parent
    return None


def frame_of_session(frames: ContextVar[Frame | None], session: object) -> Frame | None:
    """The innermost frame working on ``session``, if any."""
    frame = frames.get()
    while frame is not None:
        if frame.root is not None and frame.root.session is session and not frame.root.ended:
            return frame
        frame = frame.parent
    return None


def describe(frame: Frame) -> Active:
    """What the planner needs to know about ``frame``'s transaction."""
    root = frame.root
    assert root is not None
    return Active(untouched=not has_work(sync_view(root.session)), adoptable=root.is_request)


def current_session(database: Database, *, is_async: bool) -> Session | AsyncSession:
    """The session ``db.current_session()`` returns: the innermost live unit's.

    Raises:
        NoActiveTransactionError: No unit of ``database`` is active in this context.
    """
    frame = frames_of(is_async=is_async).get()
    while frame is not None:
        if frame.database is database and not (frame.root is not None and frame.root.ended):
            return frame.session
        frame = frame.parent
    if is_async:
        raise NoActiveTransactionError(
            "db.current_async_session() found no session. This code runs outside a request "
            "that depends on db.async_session and outside db.async_transaction() / "
            "@transactional (a task started with create_task? a background task?). Open "
            'one with "async with db.async_transaction() as session:" or decorate the '
            "function with @db.transactional."
        )
    raise NoActiveTransactionError(
        "db.current_session() found no session. This code runs outside a request that "
        "depends on db.session and outside db.transaction() / @transactional (a "
        'thread? a background task?). Open one with "with db.transaction() as '
        'session:" or decorate the function with @db.transactional.'
    )


def hooks_frame(database: Database, name: str) -> Frame:
    """The frame whose transaction ``db.on_commit()`` / ``db.on_rollback()`` attach to.

    Raises:
        NoActiveTransactionError: Nothing is active, or the active unit's session belongs to
            the caller, who commits it.
    """
    frame = active_frame(sync_frames, database) or active_frame(async_frames, database)
    if frame is None:
        raise NoActiveTransactionError(
            f"db.{name}() needs an active transaction to attach the callback to, and none "
            "is active here. Call it inside a request that depends on db.session, inside "
            "db.transaction() or a @transactional function."
        )
    owner = frame.hooks_frame
    if owner.root is not None and owner.root.external:
        raise NoActiveTransactionError(
            f"db.{name}() was called in a unit of work whose session was passed in by the "
            "caller, who commits it: the library cannot know when that happens. Register "
            "the callback inside a request session, db.transaction() or @db.transactional "
            "unit that owns its transaction."
        )
    return owner


def hooks_owner(frame: Frame) -> Frame:
    """The frame that collects hooks once a savepoint frame is released."""
    parent = frame.parent
    while parent is not None:
        if parent.root is frame.root:
            return parent.hooks_frame
        parent = parent.parent
    raise AssertionError("a savepoint frame always has its transaction's frame as an ancestor")
