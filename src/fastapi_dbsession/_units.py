"""Run units of work: one generator decides every step, two small drivers do the I/O.

A unit of work (a request session, ``db.transaction()``, a ``@transactional`` call) is the
generator :func:`unit_flow`. It yields typed *steps* (``Commit(session)``, ``Body(session)``,
...) and receives their outcomes, exactly as httpx's ``auth_flow`` does; :func:`drive`
performs a step with plain calls, :func:`async_drive` with the same calls inside one greenlet.
Every decision (join or begin, savepoint, rollback-only, hooks, options) is made once, here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Generator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import sqlalchemy.exc
from anyio import from_thread
from sqlalchemy import text
from sqlalchemy.util import await_only, greenlet_spawn

from . import _checks
from ._compat import warn
from ._frames import Frame, Hook, Root, active_frame, describe, frame_of_session, hooks_owner
from ._frames import sync_view as _sync_view
from ._outcome import commit, rollback
from ._sessions import (
    ENDED_MESSAGE,
    FINISHED,
    FINISHED_MESSAGE,
    has_work,
    is_busy,
    wait_until_idle,
)
from .errors import (
    ConfigurationError,
    ConnectionDeadlockError,
    DBSessionWarning,
    UnexpectedRollbackError,
)
from .propagation import Action, UnitOptions, plan_unit_of_work, should_roll_back

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session, SessionTransaction

    from ._database import Database

logger = logging.getLogger(__name__)


# -- the steps a flow yields ---------------------------------------------------------------


class NewSession(NamedTuple):
    """Open a session (``autocommit``: every statement commits at once; ``read``: read-only
    work, which goes to a read replica when there are some)."""

    database: Database
    autocommit: bool
    read: bool = False


class Connect(NamedTuple):
    """Begin the transaction now, on a connection with these execution options."""

    session: Session | AsyncSession
    execution_options: dict[str, object]


class Execute(NamedTuple):
    """Run one SQL statement (``SET TRANSACTION READ ONLY``, a statement timeout)."""

    session: Session | AsyncSession
    sql: str


class BeginNested(NamedTuple):
    """Open a SAVEPOINT; the outcome is its ``SessionTransaction``."""

    session: Session | AsyncSession


class Commit(NamedTuple):
    """Commit a session's transaction, or release a savepoint."""

    target: Session | AsyncSession | SessionTransaction


class Rollback(NamedTuple):
    """Roll back a session's transaction, or roll back to a savepoint."""

    target: Session | AsyncSession | SessionTransaction


class Close(NamedTuple):
    """Close the autocommit session of a unit that ran without a transaction."""

    session: Session | AsyncSession


class Finish(NamedTuple):
    """Mark a session ended (using it later raises our error) and close it."""

    session: Session | AsyncSession
    is_request: bool


class CallHook(NamedTuple):
    """Run an ``on_commit`` / ``on_rollback`` callback (sync or async)."""

    hook: Hook


class Settle(NamedTuple):
    """Wait until no other task is inside an operation on this ``AsyncSession``."""

    session: AsyncSession


class Body(NamedTuple):
    """Hand the session to the unit's body; the flow resumes when the body is done."""

    session: Session | AsyncSession


Step = (
    NewSession
    | Connect
    | Execute
    | BeginNested
    | Commit
    | Rollback
    | Close
    | Finish
    | CallHook
    | Settle
    | Body
)
Flow = Generator[Step, Any, None]


# -- the flow --------------------------------------------------------------------------------


def unit_flow(
    database: Database | None,
    frames: ContextVar[Frame | None],
    options: UnitOptions,
    *,
    passed_session: object = None,
    is_async: bool,
) -> Flow:
    """The whole life of one unit of work, as steps. Yields ``Body(session)`` once."""
    if passed_session is not None:
        current = frame_of_session(frames, passed_session)
        if current is None:  # a session the caller manages: the unit takes part in it
            external = Root(
                session=cast("Session", passed_session), owns_session=False, external=True
            )
            current = Frame(database=database, root=external, parent=frames.get())
        database = database or current.database
    else:
        current = active_frame(frames, database)
        if current is not None and database is None:
            database = current.database
    action = plan_unit_of_work(
        options.propagation,
        None if current is None else describe(current),
        durable=options.durable,
        retries=options.retries,
        can_begin=database is not None,
    )
    frame = yield from _enter(action, database, current, frames, options, is_async=is_async)
    token = frames.set(frame)
    try:
        try:
            yield Body(frame.session)
        except BaseException as error:
            yield from _exit(action, frame, error, options)
            if database is not None and isinstance(error, sqlalchemy.exc.TimeoutError):
                raise database.pool_timeout_error(is_async=is_async) from error
            raise
        yield from _exit(action, frame, None, options)
    finally:
        frames.reset(token)


def _enter(
    action: Action,
    database: Database | None,
    current: Frame | None,
    frames: ContextVar[Frame | None],
    options: UnitOptions,
    *,
    is_async: bool,
) -> Generator[Step, Any, Frame]:
    parent = frames.get()
    if action is Action.NONE:
        assert database is not None
        session = yield NewSession(database, True)
        return Frame(database=database, root=None, parent=parent, plain_session=session)
    if action is Action.BEGIN:
        assert database is not None
        _check_second_connection(database, frames, is_async=is_async)
        session = yield NewSession(database, False, options.read_only)
        root = Root(session=session, owns_session=True)
        yield from _apply_options(root, options, database)
        return Frame(database=database, root=root, parent=parent)
    assert current is not None
    assert current.root is not None
    if action is Action.ADOPT:
        root = Root(session=current.root.session, owns_session=False)
        yield from _apply_options(root, options, current.database)
        return Frame(database=current.database, root=root, parent=parent)
    if options.starts_transaction:
        _refuse_options_mid_transaction(current, options)
    if action is Action.SAVEPOINT:
        savepoint = yield BeginNested(current.root.session)
        return Frame(
            database=current.database, root=current.root, parent=parent, savepoint=savepoint
        )
    yield from _apply_options(current.root, options, current.database)  # untouched: allowed
    return Frame(
        database=current.database, root=current.root, parent=parent, owner=current.hooks_frame
    )


def _refuse_options_mid_transaction(current: Frame, options: UnitOptions) -> None:
    assert current.root is not None
    if current.savepoint is None and not has_work(_sync_view(current.root.session)):
        return
    raise ConfigurationError(
        "isolation_level, read_only and timeout apply when a transaction begins, but this unit "
        "joins a transaction that is already running (its session holds a connection), so "
        "they could not take effect. (SQLAlchemy would only warn and ignore them.) Set them "
        "on the outermost unit, or use propagation=Propagation.REQUIRES_NEW."
    )


def _apply_options(
    root: Root, options: UnitOptions, database: Database | None
) -> Generator[Step, Any, None]:
    if not options.starts_transaction:
        return
    assert database is not None
    if database.is_bound:
        return  # inside a test's outer transaction these cannot apply (documented)
    dialect = database.dialect_name(is_async=hasattr(root.session, "sync_session"))
    execution_options: dict[str, object] = {}
    if options.isolation_level is not None:
        _checks.backend_isolation_level(
            options.isolation_level, dialect, argument="isolation_level"
        )
        execution_options["isolation_level"] = options.isolation_level
    statements: list[str] = []
    if options.read_only:
        root.read_only = True
        if dialect in ("postgresql", "mysql", "mariadb"):
            statements.append("SET TRANSACTION READ ONLY")
    if options.timeout is not None:
        milliseconds = max(1, round(options.timeout * 1000))
        if dialect == "postgresql":
            statements.append(f"SET LOCAL statement_timeout = {milliseconds}")
        elif dialect in ("mysql", "mariadb"):
            statements.append(f"SET SESSION max_statement_time = {milliseconds / 1000:.3f}")
            root.reset_sql = "SET SESSION max_statement_time = DEFAULT"
        else:
            warn(
                f"timeout={options.timeout} is not enforced on {dialect}: it has no statement "
                "timeout. It is enforced on PostgreSQL and MariaDB/MySQL.",
                DBSessionWarning,
            )
    yield Connect(root.session, execution_options)
    for statement in statements:
        yield Execute(root.session, statement)


def _check_second_connection(
    database: Database, frames: ContextVar[Frame | None], *, is_async: bool
) -> None:
    capacity = database.pool_capacity(is_async=is_async)
    if capacity is None:
        return
    held: set[int] = set()
    frame = frames.get()
    while frame is not None:
        root = frame.root
        if frame.database is database and root is not None and not root.external:
            session = _sync_view(root.session)
            if session.in_transaction():
                held.add(id(session))
        frame = frame.parent
    if len(held) >= capacity:
        raise ConnectionDeadlockError(
            f"Propagation.REQUIRES_NEW needs a connection of its own, but this context already "
            f"holds {len(held)} of the pool's {capacity} and would wait for itself forever. "
            "Raise pool_size / max_overflow, or avoid REQUIRES_NEW here."
        )


def _exit(
    action: Action, frame: Frame, error: BaseException | None, options: UnitOptions
) -> Generator[Step, Any, None]:
    undo = error is not None and should_roll_back(
        error, options.rollback_on, options.no_rollback_on
    )
    if action is Action.NONE:
        yield Close(frame.session)
        return
    root = frame.root
    assert root is not None
    if action in (Action.BEGIN, Action.ADOPT):
        yield from finish_root(root, frame, commit=not undo)
        return
    if action is Action.SAVEPOINT:
        assert frame.savepoint is not None
        if undo or frame.doomed is not None:
            yield Rollback(frame.savepoint)
            yield from _run_hooks(frame.on_rollback)
            if not undo:
                raise _unexpected_rollback(frame.doomed)
        else:
            yield Commit(frame.savepoint)
            owner = hooks_owner(frame)
            owner.on_commit.extend(frame.on_commit)
            owner.on_rollback.extend(frame.on_rollback)
        return
    owner = frame.hooks_frame  # JOIN: doom the transaction (or savepoint) it joined
    if undo and owner.doomed is None:
        owner.doomed = f"{type(error).__name__}: {error}"
        logger.debug("transaction marked rollback-only by %r", error)


def finish_root(root: Root, frame: Frame, *, commit: bool) -> Generator[Step, Any, None]:
    """End a transaction: commit (or refuse to, if rollback-only) or roll back; then hooks."""
    session = root.session
    sync_session = _sync_view(session)
    root.ended = True
    doomed = commit and frame.doomed is not None
    committed = False
    if sync_session is not session:  # async: let a task still inside an operation finish
        async_session = cast("AsyncSession", session)
        if is_busy(async_session):
            yield Settle(async_session)
    try:
        if root.reset_sql is not None:
            try:
                yield Execute(session, root.reset_sql)
            except Exception as exc:  # the connection may be gone: ending will say so
                logger.debug("could not reset the statement timeout: %r", exc)
        if commit and not doomed and not root.read_only:
            if has_work(sync_session):
                yield Commit(session)
            committed = True
        elif sync_session.in_transaction():
            yield Rollback(session)
    except BaseException:
        if sync_session.in_transaction():
            yield Rollback(session)
        yield from _close(root)
        yield from _run_hooks(frame.on_rollback)
        raise
    yield from _close(root)
    if doomed:
        yield from _run_hooks(frame.on_rollback)
        raise _unexpected_rollback(frame.doomed)
    hooks = frame.on_commit if committed else frame.on_rollback
    if hooks:
        yield from _run_hooks(hooks)


def _unexpected_rollback(reason: str | None) -> UnexpectedRollbackError:
    return UnexpectedRollbackError(
        "The transaction was rolled back instead of committed: an inner unit of work that "
        f"joined it failed ({reason}) and marked it rollback-only, and the exception was "
        "caught before it reached this boundary. Let the exception propagate, or run the "
        "inner unit with propagation=Propagation.NESTED (a savepoint) so that its failure "
        "only undoes its own work."
    )


def _close(root: Root) -> Generator[Step, Any, None]:
    if root.owns_session:
        yield Finish(root.session, root.is_request)


def _run_hooks(hooks: list[tuple[Hook, bool]]) -> Generator[Step, Any, None]:
    for hook, robust in hooks:  # (callers skip this generator when there are no hooks)
        try:
            yield CallHook(hook)
        except Exception:
            if not robust:
                raise
            logger.exception("on_commit/on_rollback callback %r failed", hook)


# -- the two drivers ---------------------------------------------------------------------


def drive(
    flow: Flow,
    value: object = None,
    error: BaseException | None = None,
    in_greenlet: bool = False,
) -> Any:
    """Run ``flow`` with plain calls until it hands out the body's session, or ends.

    Args:
        flow: The unit's generator.
        value: The outcome of the step the flow last yielded.
        error: What the body raised, thrown into the flow.
        in_greenlet: Work on ``AsyncSession``s through their sync sessions (the async side).
    """
    table = GREENLET_STEPS if in_greenlet else SYNC_STEPS
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration:
            return None
        if type(step) is Body:
            return step.session
        error = None
        try:
            value = table[type(step)](step)
        except BaseException as exc:  # handed back to the flow, which decides
            value, error = None, exc


async def async_drive(flow: Flow, value: object = None, error: BaseException | None = None) -> Any:
    """Async twin of :func:`drive`: the same loop, run in one greenlet for the whole flow.

    Each step works on the ``AsyncSession``'s sync session, as ``AsyncSession`` itself does, so
    ending a transaction (commit, close, callbacks) costs one switch to the event loop instead of
    one per operation.
    """
    return await greenlet_spawn(drive, flow, value, error, True)


def _call_from_sync(step: CallHook) -> object:
    result = step.hook()
    if not inspect.isawaitable(result):
        return result
    if _in_worker_thread():  # FastAPI's threadpool: run it on the request's event loop
        return from_thread.run(lambda: result)  # type: ignore[arg-type,return-value]
    return asyncio.run(result)  # type: ignore[arg-type]


def _in_worker_thread() -> bool:
    try:
        from_thread.check_cancelled()
    except RuntimeError:  # not a thread started by an event loop's to_thread
        return False
    return True


def _call_in_greenlet(step: CallHook) -> object:
    result = step.hook()
    return await_only(result) if inspect.isawaitable(result) else result


def finish_session(session: Session | AsyncSession, is_request: bool) -> None:  # (Finish)
    sync_session = _sync_view(session)
    sync_session.info[FINISHED] = FINISHED_MESSAGE if is_request else ENDED_MESSAGE
    sync_session.close()


def _new_async_session(step: NewSession) -> object:
    database = step.database
    return await_only(database.async_new_session(autocommit=step.autocommit, read=step.read))


# Both tables act on the sync Session (an AsyncSession's sync_session, inside the greenlet);
# only opening sessions, callbacks and waiting differ between the sides.
_SHARED_STEPS: Mapping[type, Callable[[Any], object]] = {
    Connect: lambda step: _sync_view(step.session).connection(
        execution_options=step.execution_options
    ),
    Execute: lambda step: _sync_view(step.session).execute(text(step.sql)),
    BeginNested: lambda step: _sync_view(step.session).begin_nested(),
    Commit: lambda step: commit(_sync_view(step.target)),  # a lost connection: outcome unknown
    Rollback: lambda step: rollback(_sync_view(step.target)),  # a lost connection rolled back
    Close: lambda step: _sync_view(step.session).close(),
    Finish: lambda step: finish_session(step.session, step.is_request),
}

SYNC_STEPS: Mapping[type, Callable[[Any], object]] = {
    **_SHARED_STEPS,
    NewSession: lambda step: step.database.new_session(autocommit=step.autocommit, read=step.read),
    CallHook: _call_from_sync,
}

GREENLET_STEPS: Mapping[type, Callable[[Any], object]] = {
    **_SHARED_STEPS,
    NewSession: _new_async_session,
    CallHook: _call_in_greenlet,
    Settle: lambda step: await_only(wait_until_idle(step.session)),
}
