"""Make a function a unit of work: ``@transactional`` and ``@db.transactional``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import re
import threading
import time
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from typing_extensions import ParamSpec

from ._frames import async_frames, sync_frames
from ._units import async_drive, drive, unit_flow
from .errors import ConfigurationError, SyncAsyncMismatchError
from .propagation import Propagation, UnitOptions, make_options, plan_retry

if TYPE_CHECKING:
    from ._database import Database

P = ParamSpec("P")
R = TypeVar("R")

retry_logger = logging.getLogger("fastapi_dbsession.retries")

_SESSION_ANNOTATION = re.compile(r"\b(Async)?Session\b")


class _CurrentSession:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CURRENT_SESSION"


CURRENT_SESSION: Any = _CurrentSession()
"""Default for a ``@transactional`` function's session parameter: "use the current one".

With ``def report(session: Session = CURRENT_SESSION)``, type checkers accept calls that
omit the session, and the decorator passes the session of the context in.
"""


class TransactionalDecorator(Protocol):
    """What ``transactional(...)`` returns: a decorator that keeps the signature."""

    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def transactional(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def transactional(
    *,
    propagation: Propagation = ...,
    isolation_level: str | None = ...,
    read_only: bool = ...,
    timeout: float | None = ...,
    durable: bool = ...,
    retries: int = ...,
    retry_on_lock_timeout: bool = ...,
    retry_deadline: float | None = ...,
    rollback_on: Sequence[type[BaseException]] = ...,
    no_rollback_on: Sequence[type[BaseException]] = ...,
) -> TransactionalDecorator: ...
def transactional(
    func: Callable[..., Any] | None = None,
    /,
    *,
    propagation: Propagation = Propagation.REQUIRED,
    isolation_level: str | None = None,
    read_only: bool = False,
    timeout: float | None = None,
    durable: bool = False,
    retries: int = 0,
    retry_on_lock_timeout: bool = False,
    retry_deadline: float | None = None,
    rollback_on: Sequence[type[BaseException]] = (),
    no_rollback_on: Sequence[type[BaseException]] = (),
) -> Any:
    """Run the decorated function (``def`` or ``async def``) as a unit of work.

    The session is the argument named ``session`` (or the first one annotated as a
    ``Session`` / ``AsyncSession``). When the caller passes it, the unit works on it; when the
    caller omits it, the unit uses the session of its context (the request's, or the enclosing
    transaction's) and passes it in. The bare form never opens a session of its own: with
    nothing active, it raises ``NoActiveTransactionError``; ``@db.transactional`` opens one.

    Args:
        func: The function, when used bare (``@transactional``).
        propagation: How the unit relates to an active transaction (default REQUIRED).
        isolation_level: E.g. ``"SERIALIZABLE"``; applied when the transaction begins.
        read_only: Enforced by the database where it can be (PostgreSQL, MariaDB/MySQL) and
            always rolled back at the end.
        timeout: Statement timeout in seconds for the transaction (PostgreSQL, MariaDB/MySQL).
        durable: The unit must be the outermost transaction (raises inside another).
        retries: Re-run the whole function up to this many times when it fails with a
            serialization failure or a deadlock, with jittered exponential backoff. Only at
            the outermost boundary. Each retry is logged (logger ``fastapi_dbsession.retries``).
        retry_on_lock_timeout: Also retry MySQL/MariaDB lock wait timeouts (error 1205).
        retry_deadline: Seconds, from the first attempt, after which no retry starts: the
            error of the last attempt is raised instead.
        rollback_on: Exception types that roll back even if ``no_rollback_on`` matches a base.
        no_rollback_on: Exception types that commit (then propagate) instead of rolling back.

    Raises:
        ConfigurationError: Bad options, or a generator function.

    Example:
        >>> @transactional(propagation=Propagation.NESTED)
        ... def add_line(session: Session, order: Order, sku: str) -> None:
        ...     session.add(OrderLine(order=order, sku=sku))
    """
    options = {name: value for name, value in locals().items() if name != "func"}
    return transactional_for(None, func, options)


def transactional_for(
    database: Database | None, func: Callable[..., Any] | None, options: dict[str, Any]
) -> Any:
    """Check ``options`` and decorate ``func`` (or return the decorator, when it is None).

    Raises:
        ConfigurationError: An option is unknown or has a wrong value.
    """
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise ConfigurationError(
            f"@transactional got unknown option(s) {', '.join(unknown)}. Its options are: "
            f"{', '.join(sorted(_OPTION_NAMES))}."
        )
    checked = make_options(**options)
    if func is not None:
        return decorate(func, database, checked)
    return lambda decorated: decorate(decorated, database, checked)


_OPTION_NAMES = frozenset(inspect.signature(make_options).parameters)


def decorate(
    func: Callable[P, R], database: Database | None, options: UnitOptions
) -> Callable[P, R]:
    """Wrap ``func`` in a unit of work; sync vs async is decided here, once."""
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ConfigurationError(
            f"@transactional cannot wrap the generator function {func.__qualname__}: its "
            "transaction would end before the generator runs. Open the unit of work inside "
            'it with "with db.transaction() as session:" instead.'
        )
    is_async = inspect.iscoroutinefunction(func)
    argument = _SessionArgument(func, is_async=is_async)

    if is_async:

        @functools.wraps(func)
        async def async_unit(*args: Any, **kwargs: Any) -> Any:
            passed = argument.passed(args, kwargs)
            started = time.monotonic()
            for attempt in itertools.count(1):
                flow = unit_flow(
                    database, async_frames, options, passed_session=passed, is_async=True
                )
                session = await async_drive(flow)
                outcome: BaseException | None = None
                try:
                    result = await func(*args, **argument.fill(kwargs, passed, session))  # type: ignore[misc]
                except BaseException as error:
                    outcome = error
                try:
                    await async_drive(flow, error=outcome)
                except BaseException as final:
                    delay = _next_delay(func, final, attempt, options, started)
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
                    continue
                return result
            raise AssertionError("unreachable")

        return async_unit  # type: ignore[return-value]

    @functools.wraps(func)
    def unit(*args: Any, **kwargs: Any) -> Any:
        passed = argument.passed(args, kwargs)
        started = time.monotonic()
        for attempt in itertools.count(1):
            flow = unit_flow(database, sync_frames, options, passed_session=passed, is_async=False)
            session = drive(flow)
            outcome: BaseException | None = None
            try:
                result = func(*args, **argument.fill(kwargs, passed, session))
            except BaseException as error:
                outcome = error
            try:
                drive(flow, error=outcome)
            except BaseException as final:
                delay = _next_delay(func, final, attempt, options, started)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            return result
        raise AssertionError("unreachable")

    return unit


class RetrySwitch:
    """Whether ``retries=N`` re-runs units at all: on, unless a test switched it off.

    Process-wide (worker threads and event loops included) and nestable: retries stay off
    until every ``off()`` block has ended.
    """

    __slots__ = ("_lock", "_offs")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offs = 0

    @property
    def enabled(self) -> bool:
        """False while a block switched retries off."""
        return self._offs == 0

    def switch_off(self) -> None:
        """Raise serialization failures and deadlocks at once (tests); see :meth:`switch_on`."""
        with self._lock:
            self._offs += 1

    def switch_on(self) -> None:
        """End one :meth:`switch_off`."""
        with self._lock:
            self._offs = max(0, self._offs - 1)


RETRIES = RetrySwitch()


def _next_delay(
    func: Callable[..., Any],
    error: BaseException,
    attempt: int,
    options: UnitOptions,
    started: float,
) -> float | None:
    """Seconds to wait before re-running ``func``, or None to raise ``error``; logs retries."""
    decision = plan_retry(
        error, attempt, options, elapsed=time.monotonic() - started, enabled=RETRIES.enabled
    )
    cause = decision.cause
    if cause is None:
        return None
    code = "" if cause.code is None else f", error {cause.code}"
    fields = {
        "unit": func.__qualname__,
        "attempt": attempt,
        "sqlstate": cause.sqlstate,
        "retry_delay": decision.delay,
    }
    if decision.delay is None:
        retry_logger.warning(
            "%s: attempt %d failed with %s (SQLSTATE %s%s); not retried: %s",
            func.__qualname__,
            attempt,
            cause.kind,
            cause.sqlstate,
            code,
            decision.given_up,
            extra=fields,
        )
        return None
    retry_logger.warning(
        "%s: attempt %d of %d failed with %s (SQLSTATE %s%s); retrying in %.3fs",
        func.__qualname__,
        attempt,
        options.retries + 1,
        cause.kind,
        cause.sqlstate,
        code,
        decision.delay,
        extra=fields,
    )
    return decision.delay


class _SessionArgument:
    """Where a decorated function takes its session, found once at decoration."""

    __slots__ = ("func", "index", "is_async", "name")

    def __init__(self, func: Callable[..., Any], *, is_async: bool) -> None:
        self.func = func
        self.is_async = is_async
        self.name, self.index = _session_parameter(func)
        if self.name is not None:
            _check_annotation(func, self.name, is_async=is_async)

    def passed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        """The session the caller passed, or None."""
        if self.name is None:
            return None
        if self.name in kwargs:
            value = kwargs[self.name]
        else:
            value = args[self.index] if self.index < len(args) else None
        if value is None or value is CURRENT_SESSION or _is_dependency_marker(value):
            return None  # the default: the unit passes the session of its context
        if _is_async_session(value) != self.is_async:
            raise SyncAsyncMismatchError(_kind_mismatch(self.func, is_async=self.is_async))
        return value

    def fill(self, kwargs: dict[str, Any], passed: object, session: object) -> dict[str, Any]:
        """The keyword arguments, with the unit's session added when the caller gave none."""
        if self.name is None or passed is not None:
            return kwargs
        return {**kwargs, self.name: session}


def _check_annotation(func: Callable[..., Any], name: str, *, is_async: bool) -> None:
    """Refuse, at decoration, a session parameter annotated with the other side's class.

    An ``async def`` unit gets an ``AsyncSession``: annotated ``Session``, its un-awaited
    calls would never run (and the reverse for a ``def``).
    """
    annotation = inspect.signature(func).parameters[name].annotation
    kind = _annotation_kind(annotation)
    if kind is None or kind == ("async" if is_async else "sync"):
        return
    if is_async:
        raise SyncAsyncMismatchError(
            f"{func.__qualname__} is an async function, but its session parameter {name!r} is "
            "annotated Session: it will be given an AsyncSession, whose methods must be "
            "awaited. Annotate it AsyncSession (from sqlalchemy.ext.asyncio), or make the "
            "function a plain def."
        )
    raise SyncAsyncMismatchError(
        f"{func.__qualname__} is a sync function, but its session parameter {name!r} is "
        "annotated AsyncSession: it will be given a Session. Annotate it Session (from "
        "sqlalchemy.orm), or make the function an async def."
    )


def _annotation_kind(annotation: object) -> str | None:
    """``"sync"`` for a Session annotation, ``"async"`` for AsyncSession, else None."""
    if isinstance(annotation, str):  # a postponed annotation: judge by the name
        if re.search(r"\bAsyncSession\b", annotation):
            return "async"
        return "sync" if re.search(r"\bSession\b", annotation) else None
    if isinstance(annotation, type):
        if not _is_session_class(annotation):
            return None
        return "async" if _is_async_session_class(annotation) else "sync"
    origin = getattr(annotation, "__origin__", None)  # Annotated[Session, Depends(...)]
    if isinstance(origin, type) and _is_session_class(origin):
        return _annotation_kind(origin)
    kinds = {_annotation_kind(argument) for argument in typing.get_args(annotation)} - {None}
    return kinds.pop() if len(kinds) == 1 else None


def _kind_mismatch(func: Callable[..., Any], *, is_async: bool) -> str:
    if is_async:
        return (
            f"{func.__qualname__} is an async function but was given a sync Session. Give it "
            "an AsyncSession (Depends(db.async_session), db.async_transaction()) or make it a "
            "plain def."
        )
    return (
        f"{func.__qualname__} is a sync function but was given an AsyncSession. Give it a "
        "Session (Depends(db.session), db.transaction()) or make it an async def."
    )


def _session_parameter(func: Callable[..., Any]) -> tuple[str | None, int]:
    """Find the session parameter: named ``session``, else the first annotated as one."""
    parameters = list(inspect.signature(func).parameters.values())
    for index, parameter in enumerate(parameters):
        if parameter.name == "session":
            return _usable(func, parameter, index)
    for index, parameter in enumerate(parameters):
        if _names_a_session(parameter.annotation):
            return _usable(func, parameter, index)
    return None, -1


def _names_a_session(annotation: object) -> bool:
    """``Session``, ``AsyncSession`` (or subclasses), also inside ``Annotated``/``| None``/str."""
    if isinstance(annotation, str):  # a postponed annotation: judge by the name
        return _SESSION_ANNOTATION.search(annotation) is not None
    if isinstance(annotation, type):
        return _is_session_class(annotation)
    origin = getattr(annotation, "__origin__", None)  # Annotated[Session, Depends(...)]
    if isinstance(origin, type) and _is_session_class(origin):
        return True
    return any(_names_a_session(argument) for argument in typing.get_args(annotation))


def _usable(func: Callable[..., Any], parameter: inspect.Parameter, index: int) -> tuple[str, int]:
    if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
        raise ConfigurationError(
            f"{func.__qualname__}: the session parameter {parameter.name!r} is positional-only, "
            "so @transactional cannot pass the current session to it. Drop the '/'."
        )
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
        return parameter.name, 1 << 30  # never positional
    return parameter.name, index


def _is_session_class(annotation: type) -> bool:
    from sqlalchemy.orm import Session

    return issubclass(annotation, Session) or _is_async_session_class(annotation)


def _is_async_session_class(annotation: type) -> bool:
    return any(
        base.__name__ == "AsyncSession" and base.__module__.startswith("sqlalchemy.ext.asyncio")
        for base in annotation.__mro__
    )


def _is_async_session(value: object) -> bool:
    return hasattr(value, "sync_session")


def _is_dependency_marker(value: object) -> bool:
    from fastapi import params

    return isinstance(value, params.Depends)
