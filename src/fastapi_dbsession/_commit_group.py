"""End a request's sessions: one database alone, or several together in declared order.

One request session ends on its own (:func:`finish`): in a worker thread (sync) or one greenlet
(async), shielded from cancellation, or right there when it has nothing to send.

When one request uses the request sessions of several managers (``Depends(orders.session)``
and ``Depends(billing.session)``), each one's ending is handed to the request's
:class:`CommitGroup` instead; the last to arrive ends them all, in the order the sessions were
opened (the order FastAPI resolved the dependencies, i.e. the order they are declared):

- with ``twophase=True`` on every manager that has something to commit: ``PREPARE`` all, then
  ``COMMIT PREPARED`` all; a failed prepare rolls every one back;
- otherwise one after another; when a commit fails, the sessions after it are rolled back and,
  if one before it committed, :class:`~fastapi_dbsession.errors.PartialCommitError` says which
  committed, which failed and which were rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio import CancelScope, to_thread
from sqlalchemy.util import greenlet_spawn

from ._frames import Frame, Root, sync_view
from ._outcome import commit, partial_commit, rollback
from ._sessions import has_work, is_busy
from ._units import Flow, async_drive, drive, finish_root, finish_session
from .errors import PartialCommitError

if TYPE_CHECKING:
    from ._database import Database

GROUP_KEYS = {  # ASGI scope: the first request session's frame, or the CommitGroup of several
    False: "fastapi_dbsession.commit_group.sync",
    True: "fastapi_dbsession.commit_group.async",
}


def _needs_io(frame: Frame) -> bool:
    """Whether ending ``frame``'s transaction sends anything, runs hooks or must wait for a
    task still inside the session; if not, it ends right here, without I/O."""
    assert frame.root is not None
    session = frame.root.session
    sync_session = sync_view(session)
    return (
        has_work(sync_session)
        or bool(frame.on_commit or frame.on_rollback)
        or (sync_session is not session and is_busy(session))  # type: ignore[arg-type]
    )


def is_plain(root: Root, frame: Frame) -> bool:
    """Whether ending ``root`` is only commit-or-roll-back and close: no hooks, not doomed, no
    reset statement (the request session's usual case, which :func:`end_plainly` ends)."""
    return not (frame.on_commit or frame.on_rollback or frame.doomed or root.reset_sql)


def end_plainly(root: Root, commit_it: bool) -> None:
    """``_units.finish_root``'s steps for a root that :func:`is_plain`, as plain calls.

    The same decisions without a generator and its driver (the hot path of every request):
    commit when asked and not read-only (COMMIT only when there is something to end), else
    roll back what is open; on failure roll back; close the session in every case. Sync, or
    inside the caller's greenlet for an ``AsyncSession`` (which must not be busy).
    """
    session = sync_view(root.session)
    root.ended = True
    try:
        if commit_it and not root.read_only:
            if has_work(session):
                commit(session)
        elif session.in_transaction():
            rollback(session)
    except BaseException:
        try:
            if session.in_transaction():
                rollback(session)
        finally:
            if root.owns_session:
                finish_session(root.session, root.is_request)
        raise
    if root.owns_session:
        finish_session(root.session, root.is_request)


async def finish(frame: Frame, commit: bool, *, is_async: bool) -> None:
    """End one request transaction: in a worker thread (sync) or one greenlet (async).

    Without hooks, rollback-only mark or reset statement (the usual request) the ending is
    :func:`end_plainly`'s plain calls; otherwise the unit flow's steps, driven.
    """
    root = frame.root
    assert root is not None
    if is_plain(root, frame) and not (is_async and is_busy(root.session)):  # type: ignore[arg-type]
        if not has_work(sync_view(root.session)):  # no thread hop, no greenlet
            end_plainly(root, commit)
            return
        with CancelScope(shield=True):  # a cancelled request still rolls back and closes
            if is_async:
                await greenlet_spawn(end_plainly, root, commit)
            else:
                await to_thread.run_sync(end_plainly, root, commit)
        return
    flow = finish_root(root, frame, commit=commit)
    if not _needs_io(frame):  # no thread hop, no greenlet
        drive(flow, in_greenlet=is_async)
        return
    with CancelScope(shield=True):  # a cancelled request still rolls back and closes
        if is_async:
            await async_drive(flow)
        else:
            await to_thread.run_sync(drive, flow)


def join(scope: MutableMapping[str, Any], frame: Frame, *, is_async: bool) -> None:
    """Record a second (third, ...) request session opened on one side, in the ASGI scope.

    The first one's frame is what ``scope[GROUP_KEYS[is_async]]`` holds (the caller sets it
    with ``setdefault``): a request with one manager's session builds no group. A second one
    turns the entry into a :class:`CommitGroup` of both; a value of another type there means
    one session ends alone.
    """
    key = GROUP_KEYS[is_async]
    held = scope[key]
    if type(held) is CommitGroup:
        held.join(frame)
    else:
        scope[key] = CommitGroup([held, frame])


@dataclass(eq=False, slots=True)
class Arrival:
    """One request session whose ending waits for the group."""

    database: Database
    frame: Frame
    commit: bool
    release: Callable[[], None]


@dataclass(eq=False, slots=True)
class CommitGroup:
    """The request sessions of one side (sync or async) of one request, in opening order."""

    frames: list[Frame] = field(default_factory=list)
    arrived: list[Arrival] = field(default_factory=list)

    def join(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def end(self, arrival: Arrival, *, is_async: bool) -> None:
        """Hand over one ending; the last to arrive ends the whole group, in opening order.

        Raises:
            PartialCommitError: A commit failed after another database had committed.
        """
        self.arrived.append(arrival)
        if len(self.arrived) < len(self.frames):
            return
        order = {id(frame): index for index, frame in enumerate(self.frames)}
        arrivals = sorted(self.arrived, key=lambda a: order[id(a.frame)])
        with CancelScope(shield=True):  # a cancelled request still ends every session
            if is_async:
                await greenlet_spawn(finish_all, arrivals, _drive_in_greenlet)
            else:
                await to_thread.run_sync(finish_all, arrivals, drive)


def _drive_in_greenlet(flow: Flow) -> Any:
    return drive(flow, in_greenlet=True)


def finish_all(arrivals: list[Arrival], run: Callable[[Flow], Any]) -> None:
    """End every session of the group (``run`` drives one unit flow: plain, or in a greenlet).

    Raises:
        PartialCommitError: A commit failed after another database had committed.
    """
    try:
        _finish_all(arrivals, run)
    finally:
        for arrival in arrivals:
            arrival.release()


def _finish_all(arrivals: list[Arrival], run: Callable[[Flow], Any]) -> None:
    committing = [a for a in arrivals if a.commit and has_work(_session(a))]
    twophase = len(committing) > 1 and all(a.database.config.twophase for a in committing)
    if twophase:
        try:
            for arrival in committing:
                _session(arrival).prepare()
        except BaseException:
            for arrival in arrivals:
                run(finish_root(_root(arrival), arrival.frame, commit=False))
            raise
    committed: list[Arrival] = []
    failure: tuple[Arrival, BaseException] | None = None
    for arrival in arrivals:
        commit = arrival.commit and failure is None
        try:
            run(finish_root(_root(arrival), arrival.frame, commit=commit))
        except BaseException as exc:
            if failure is None:
                failure = (arrival, exc)
            continue
        if commit and arrival in committing:
            committed.append(arrival)
    if failure is None:
        return
    failed, error = failure
    if not committed:
        raise error
    rolled_back = [a for a in committing if a is not failed and a not in committed]
    raise _partial(committed, failed, rolled_back, error, twophase=twophase) from error


def _session(arrival: Arrival) -> Any:
    return sync_view(_root(arrival).session)


def _root(arrival: Arrival) -> Any:
    root = arrival.frame.root
    assert root is not None
    return root


def _partial(
    committed: list[Arrival],
    failed: Arrival,
    rolled_back: list[Arrival],
    error: BaseException,
    *,
    twophase: bool,
) -> PartialCommitError:
    if twophase:
        advice = (
            f"Every database was prepared; {failed.database!r}'s prepared transaction may still "
            "be on its server (SELECT * FROM pg_prepared_xacts): COMMIT PREPARED it to finish "
            "the request's work, or ROLLBACK PREPARED it."
        )
    else:
        advice = (
            "Nothing undoes the commits already made: reconcile them, or make the request "
            "atomic with twophase=True on every manager (PostgreSQL with "
            "max_prepared_transactions > 0)."
        )
    return partial_commit(
        [(a.database.config.name, repr(a.database)) for a in committed],
        (failed.database.config.name, repr(failed.database)),
        error,
        rolled_back=[repr(a.database) for a in rolled_back],
        advice=advice,
    )
