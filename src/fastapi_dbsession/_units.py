"""Run units of work: one generator decides every step, two small drivers do the I/O.

A unit of work (a request session, ``db.transaction()``, a ``@transactional`` call) is the
generator :func:`unit_flow`. It yields *steps* (``("commit", session)``, ``("body",
session)``, ...) and receives their outcomes, exactly as httpx's ``auth_flow`` does;
:func:`drive` performs a step with plain calls, :func:`adrive` with ``await``. Every
decision (join or begin, savepoint, rollback-only, hooks, options) is made once, here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio import from_thread
from sqlalchemy import text
from sqlalchemy.util import await_only, greenlet_spawn

from ._compat import warn
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
from .propagation import Action, Active, Propagation, plan_unit_of_work, should_roll_back

if TYPE_CHECKING:
    from .manager import DatabaseSessionManager

logger = logging.getLogger(__name__)

Hook = Callable[[], object]
Step = tuple[Any, ...]
Flow = Generator[Step, Any, None]


@dataclass(frozen=True, slots=True)
class UnitOptions:
    """Everything a caller can ask of a unit of work."""

    propagation: Propagation = Propagation.REQUIRED
    isolation_level: str | None = None
    read_only: bool = False
    timeout: float | None = None
    durable: bool = False
    retries: int = 0
    retry_on_lock_timeout: bool = False
    rollback_on: Sequence[type[BaseException]] = ()
    no_rollback_on: Sequence[type[BaseException]] = ()

    @property
    def starts_transaction(self) -> bool:
        """Whether an option must be applied when the transaction begins."""
        return self.isolation_level is not None or self.read_only or self.timeout is not None


DEFAULT_OPTIONS = UnitOptions()


@dataclass(eq=False, slots=True)
class Root:
    """One transaction on one session, shared by every frame that takes part in it."""

    session: Any
    owns_session: bool  # close it at the end (False: a request session adopted by a unit)
    is_request: bool = False
    external: bool = False  # a session the caller passed in and manages itself
    read_only: bool = False
    reset_sql: str | None = None  # run before the transaction ends (MariaDB statement timeout)
    ended: bool = False  # finished: frames still pointing here (context copies) are stale


@dataclass(eq=False, slots=True)
class Frame:
    """One unit of work in a context; frames chain through ``parent`` (any manager)."""

    manager: DatabaseSessionManager | None
    root: Root | None  # None: a unit that runs without a transaction
    parent: Frame | None
    savepoint: Any = None
    on_commit: list[tuple[Hook, bool]] = field(default_factory=list)
    on_rollback: list[tuple[Hook, bool]] = field(default_factory=list)
    owner: Frame | None = None  # the frame whose hooks this one's hooks join (JOIN frames)
    plain_session: Any = None  # the autocommit session of a unit without a transaction
    doomed: str | None = None  # rollback-only: why a joined unit failed (root/savepoint frames)

    @property
    def hooks_frame(self) -> Frame:
        return self.owner or self


sync_frames: ContextVar[Frame | None] = ContextVar("fastapi_dbsession.sync_frame", default=None)
async_frames: ContextVar[Frame | None] = ContextVar("fastapi_dbsession.async_frame", default=None)


def active_frame(
    frames: ContextVar[Frame | None], manager: DatabaseSessionManager | None
) -> Frame | None:
    """The innermost frame of ``manager`` (of any manager if None) that has a transaction."""
    frame = frames.get()
    while frame is not None:
        if frame.root is not None and frame.root.ended:
            frame = frame.parent  # a finished transaction seen through a copied context
        elif manager is None or frame.manager is manager:
            return frame if frame.root is not None else None  # NOT_SUPPORTED suspends
        else:
            frame = frame.parent
    return None


def innermost_session(frames: ContextVar[Frame | None], manager: DatabaseSessionManager) -> Any:
    """The session ``db.current_session()`` returns: the innermost live unit's, or None."""
    frame = frames.get()
    while frame is not None:
        if frame.manager is manager and not (frame.root is not None and frame.root.ended):
            return frame.plain_session if frame.root is None else frame.root.session
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


def _describe(frame: Frame) -> Active:
    root = frame.root
    assert root is not None
    session = root.session
    sync_session = getattr(session, "sync_session", session)
    return Active(untouched=not has_work(sync_session), adoptable=root.is_request)


def unit_flow(
    manager: DatabaseSessionManager | None,
    frames: ContextVar[Frame | None],
    options: UnitOptions,
    *,
    passed_session: object = None,
    is_async: bool,
) -> Flow:
    """The whole life of one unit of work, as steps. Yields ``("body", session)`` once."""
    if passed_session is not None:
        current = frame_of_session(frames, passed_session)
        if current is None:  # a session the caller manages: the unit takes part in it
            external = Root(session=passed_session, owns_session=False, external=True)
            current = Frame(manager=manager, root=external, parent=frames.get())
        manager = manager or current.manager
    else:
        current = active_frame(frames, manager)
        if current is not None and manager is None:
            manager = current.manager
    action = plan_unit_of_work(
        options.propagation,
        None if current is None else _describe(current),
        durable=options.durable,
        retries=options.retries,
        can_begin=manager is not None,
    )
    frame = yield from _enter(action, manager, current, frames, options, is_async=is_async)
    token = frames.set(frame)
    try:
        try:
            yield ("body", frame.plain_session if frame.root is None else frame.root.session)
        except BaseException as error:
            yield from _exit(action, frame, error, options)
            raise
        yield from _exit(action, frame, None, options)
    finally:
        frames.reset(token)


def _enter(
    action: Action,
    manager: DatabaseSessionManager | None,
    current: Frame | None,
    frames: ContextVar[Frame | None],
    options: UnitOptions,
    *,
    is_async: bool,
) -> Generator[Step, Any, Frame]:
    parent = frames.get()
    if action is Action.NONE:
        assert manager is not None
        session = yield ("new_session", manager, True)
        return Frame(manager=manager, root=None, parent=parent, plain_session=session)
    if action is Action.BEGIN:
        assert manager is not None
        _check_second_connection(manager, frames, is_async=is_async)
        session = yield ("new_session", manager, False)
        root = Root(session=session, owns_session=True)
        yield from _apply_options(root, options, manager)
        return Frame(manager=manager, root=root, parent=parent)
    assert current is not None
    assert current.root is not None
    if action is Action.ADOPT:
        root = Root(session=current.root.session, owns_session=False)
        yield from _apply_options(root, options, current.manager)
        return Frame(manager=current.manager, root=root, parent=parent)
    if options.starts_transaction:
        _refuse_options_mid_transaction(current, options)
    if action is Action.SAVEPOINT:
        savepoint = yield ("begin_nested", current.root.session)
        return Frame(manager=current.manager, root=current.root, parent=parent, savepoint=savepoint)
    yield from _apply_options(current.root, options, current.manager)  # untouched: allowed
    return Frame(
        manager=current.manager, root=current.root, parent=parent, owner=current.hooks_frame
    )


def _refuse_options_mid_transaction(current: Frame, options: UnitOptions) -> None:
    assert current.root is not None
    session = current.root.session
    if current.savepoint is None and not has_work(getattr(session, "sync_session", session)):
        return
    raise ConfigurationError(
        "isolation_level, read_only and timeout apply when a transaction begins, but this unit "
        "joins a transaction that is already running (its session holds a connection), so "
        "they could not take effect. (SQLAlchemy would only warn and ignore them.) Set them "
        "on the outermost unit, or use propagation=Propagation.REQUIRES_NEW."
    )


def _apply_options(
    root: Root, options: UnitOptions, manager: DatabaseSessionManager | None
) -> Generator[Step, Any, None]:
    if not options.starts_transaction:
        return
    assert manager is not None
    if manager._binding is not None:
        return  # inside a test's outer transaction these cannot apply (documented)
    dialect = manager._dialect_name(is_async=hasattr(root.session, "sync_session"))
    execution_options: dict[str, object] = {}
    if options.isolation_level is not None:
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
    yield ("connection", root.session, execution_options)
    for statement in statements:
        yield ("execute", root.session, statement)


def _check_second_connection(
    manager: DatabaseSessionManager, frames: ContextVar[Frame | None], *, is_async: bool
) -> None:
    capacity = manager._pool_capacity(is_async=is_async)
    if capacity is None:
        return
    held: set[int] = set()
    frame = frames.get()
    while frame is not None:
        root = frame.root
        if frame.manager is manager and root is not None and not root.external:
            session = getattr(root.session, "sync_session", root.session)
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
        yield ("close", frame.plain_session)
        return
    root = frame.root
    assert root is not None
    if action in (Action.BEGIN, Action.ADOPT):
        yield from finish_root(root, frame, commit=not undo)
        return
    if action is Action.SAVEPOINT:
        if undo or frame.doomed is not None:
            yield ("rollback", frame.savepoint)
            yield from _run_hooks(frame.on_rollback)
            if not undo:
                raise _unexpected_rollback(frame.doomed)
        else:
            yield ("commit", frame.savepoint)
            owner = _hooks_owner(frame)
            owner.on_commit.extend(frame.on_commit)
            owner.on_rollback.extend(frame.on_rollback)
        return
    owner = frame.hooks_frame  # JOIN: doom the transaction (or savepoint) it joined
    if undo and owner.doomed is None:
        owner.doomed = f"{type(error).__name__}: {error}"
        logger.debug("transaction marked rollback-only by %r", error)


def _hooks_owner(frame: Frame) -> Frame:
    """The frame that collects hooks once a savepoint frame is released."""
    parent = frame.parent
    while parent is not None:
        if parent.root is frame.root:
            return parent.hooks_frame
        parent = parent.parent
    raise AssertionError("a savepoint frame always has its transaction's frame as an ancestor")


def finish_root(root: Root, frame: Frame, *, commit: bool) -> Generator[Step, Any, None]:
    """End a transaction: commit (or refuse to, if rollback-only) or roll back; then hooks."""
    session = root.session
    sync_session = getattr(session, "sync_session", session)
    root.ended = True
    doomed = commit and frame.doomed is not None
    committed = False
    if sync_session is not session and is_busy(session):
        yield ("settle", session)  # async: let a task still inside an operation finish
    try:
        if root.reset_sql is not None:
            try:
                yield ("execute", session, root.reset_sql)
            except Exception as exc:  # the connection may be gone: ending will say so
                logger.debug("could not reset the statement timeout: %r", exc)
        if commit and not doomed and not root.read_only:
            if has_work(sync_session):
                yield ("commit", session)
            committed = True
        elif sync_session.in_transaction():
            yield ("rollback", session)
    except BaseException:
        if sync_session.in_transaction():
            yield ("rollback", session)
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
        yield ("finish", root.session, root.is_request)


def _run_hooks(hooks: list[tuple[Hook, bool]]) -> Generator[Step, Any, None]:
    for hook, robust in hooks:  # (callers skip this generator when there are no hooks)
        try:
            yield ("call", hook)
        except Exception:
            if not robust:
                raise
            logger.exception("on_commit/on_rollback callback %r failed", hook)


# -- the two drivers ---------------------------------------------------------------------


def drive(
    flow: Flow,
    value: object = None,
    error: BaseException | None = None,
    steps: Mapping[str, Callable[..., Any]] | None = None,
) -> Any:
    """Run ``flow`` with plain calls until it hands out the body's session, or ends."""
    table = _SYNC_STEPS if steps is None else steps
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration:
            return None
        kind, *args = step
        if kind == "body":
            return args[0]
        error = None
        try:
            value = table[kind](*args)
        except BaseException as exc:  # handed back to the flow, which decides
            value, error = None, exc


async def adrive(flow: Flow, value: object = None, error: BaseException | None = None) -> Any:
    """Async twin of :func:`drive`: the same loop, run in one greenlet for the whole flow.

    Each step works on the ``AsyncSession``'s sync session, as ``AsyncSession`` itself does, so
    ending a transaction (commit, close, callbacks) costs one switch to the event loop instead of
    one per operation.
    """
    return await greenlet_spawn(drive, flow, value, error, GREENLET_STEPS)


def _call_from_sync(hook: Hook) -> object:
    result = hook()
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


def _call_in_greenlet(hook: Hook) -> object:
    result = hook()
    return await_only(result) if inspect.isawaitable(result) else result


def _finish_sync(session: Any, is_request: bool) -> None:
    session.info[FINISHED] = FINISHED_MESSAGE if is_request else ENDED_MESSAGE
    session.close()


def _sync_view(target: Any) -> Any:
    """The sync object behind an ``AsyncSession`` (a savepoint begun in a greenlet is sync)."""
    return getattr(target, "sync_session", target)


_SYNC_STEPS: dict[str, Callable[..., Any]] = {
    "new_session": lambda manager, autocommit: manager._new_session(autocommit=autocommit),
    "connection": lambda session, options: session.connection(execution_options=options),
    "execute": lambda session, sql: session.execute(text(sql)),
    "begin_nested": lambda session: session.begin_nested(),
    "commit": lambda target: target.commit(),
    "rollback": lambda target: target.rollback(),
    "close": lambda session: session.close(),
    "finish": _finish_sync,
    "call": _call_from_sync,
}

# The async side, inside one greenlet: AsyncSession steps act on its sync session; what must
# run on the event loop (new async connections, async callbacks, waiting) goes through await_only.
GREENLET_STEPS: dict[str, Callable[..., Any]] = {
    "new_session": lambda manager, autocommit: await_only(
        manager._anew_session(autocommit=autocommit)
    ),
    "connection": lambda session, options: session.sync_session.connection(
        execution_options=options
    ),
    "execute": lambda session, sql: session.sync_session.execute(text(sql)),
    "begin_nested": lambda session: session.sync_session.begin_nested(),
    "commit": lambda target: _sync_view(target).commit(),
    "rollback": lambda target: _sync_view(target).rollback(),
    "close": lambda session: session.sync_session.close(),
    "finish": lambda session, is_request: _finish_sync(session.sync_session, is_request),
    "call": _call_in_greenlet,
    "settle": lambda session: await_only(wait_until_idle(session)),
}
