"""Decide what a unit of work or a request session does, from plain options; no I/O.

The option types (:class:`UnitOptions`, :data:`CommitPolicy`) and every pure decision over
them live here: the propagation planner, Spring's rollback rules, the retry classification and
backoff, and the request session's commit rule.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from . import _checks
from .errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    NoActiveTransactionError,
    TransactionExistsError,
)


class Propagation(enum.Enum):
    """How a unit of work relates to the transaction already active in its context.

    The names and meanings are Spring's ``@Transactional(propagation=...)``.
    """

    REQUIRED = "required"
    """Join the active transaction, or start one (the default)."""
    REQUIRES_NEW = "requires_new"
    """Always start an independent transaction on its own session and connection."""
    NESTED = "nested"
    """A SAVEPOINT inside the active transaction, or a new transaction when there is none."""
    MANDATORY = "mandatory"
    """Join the active transaction; raise ``NoActiveTransactionError`` when there is none."""
    NEVER = "never"
    """Run without a transaction; raise ``TransactionExistsError`` when one is active."""
    SUPPORTS = "supports"
    """Join the active transaction, or run without one."""
    NOT_SUPPORTED = "not_supported"
    """Run without a transaction, suspending the active one for the duration."""


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
    retry_deadline: float | None = None
    rollback_on: Sequence[type[BaseException]] = ()
    no_rollback_on: Sequence[type[BaseException]] = ()

    @property
    def starts_transaction(self) -> bool:
        """Whether an option must be applied when the transaction begins."""
        return self.isolation_level is not None or self.read_only or self.timeout is not None


def make_options(
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
) -> UnitOptions:
    """Check the options of a unit of work and bundle them.

    Raises:
        ConfigurationError: An option has the wrong type or value.
    """
    if not isinstance(propagation, Propagation):
        raise ConfigurationError(
            f"propagation={propagation!r} is not a Propagation. Use e.g. "
            "propagation=Propagation.REQUIRES_NEW (from fastapi_dbsession import Propagation)."
        )
    isolation_level = _checks.isolation_level(isolation_level, argument="isolation_level")
    for name, value in (
        ("read_only", read_only),
        ("durable", durable),
        ("retry_on_lock_timeout", retry_on_lock_timeout),
    ):
        _checks.flag(value, argument=name)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigurationError(
            f"retries={retries!r} must be a whole number >= 0: how many times the unit re-runs "
            "after a serialization failure or deadlock (0, the default, never re-runs)."
        )
    for name, seconds in (("timeout", timeout), ("retry_deadline", retry_deadline)):
        if seconds is not None and (
            not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0
        ):
            raise ConfigurationError(
                f"{name}={seconds!r} must be a number of seconds > 0, e.g. {name}=5.0 "
                "(leave it out for no limit)."
            )
    if retry_deadline is not None and not retries:
        raise ConfigurationError(
            f"retry_deadline={retry_deadline!r} bounds the time spent retrying, but retries is "
            "0, so nothing is retried. Set retries=N too, e.g. retries=5, retry_deadline=2.0."
        )
    for name, types in (("rollback_on", rollback_on), ("no_rollback_on", no_rollback_on)):
        if (
            isinstance(types, type | str)
            or not isinstance(types, Iterable)
            or not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in types)
        ):
            raise ConfigurationError(
                f"{name}={types!r} must be a tuple of exception classes, e.g. "
                f"{name}=(PaymentDeclined,) (an empty tuple for none)."
            )
    return UnitOptions(
        propagation=propagation,
        isolation_level=isolation_level,
        read_only=read_only,
        timeout=timeout,
        durable=durable,
        retries=retries,
        retry_on_lock_timeout=retry_on_lock_timeout,
        retry_deadline=retry_deadline,
        rollback_on=tuple(rollback_on),
        no_rollback_on=tuple(no_rollback_on),
    )


DEFAULT_OPTIONS = UnitOptions()

CommitPolicy = Literal["commit", "manual", "read_only"]
"""What a request session does when its endpoint succeeds: ``"commit"`` (the default),
``"manual"`` (never commit for you; roll back what is left) or ``"read_only"`` (always roll
back)."""
COMMIT_POLICIES: tuple[CommitPolicy, ...] = ("commit", "manual", "read_only")


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


def check_statuses(statuses: object, *, argument: str) -> Container[int] | None:
    """Return ``statuses`` if it can say which status codes commit, else raise a clear error."""
    if statuses is None:
        return None
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Container):
        raise ConfigurationError(
            f"{argument}={statuses!r} is not a collection of status codes. Pass the statuses "
            f"whose responses commit, e.g. {argument}=range(200, 400) (redirects commit too) "
            f"or {argument}={{200, 201, 204}}."
        )
    if isinstance(statuses, Iterable):
        wrong = [code for code in statuses if not (isinstance(code, int) and 100 <= code <= 599)]
        if wrong:
            raise ConfigurationError(
                f"{argument} holds {wrong[0]!r}, which is not an HTTP status code (100-599)."
            )
    return statuses


def should_commit(
    policy: CommitPolicy,
    error: BaseException | None,
    status: int | None,
    statuses: Container[int] | None = None,
) -> bool:
    """Decide the fate of a request transaction; no I/O.

    Args:
        policy: The route's commit policy.
        error: What the endpoint or a dependency raised, if anything.
        status: The status code set on the injected ``Response``, or the route's declared
            one; None if neither is known (200 then).
        statuses: The status codes that commit; None: every status below 400.
    """
    if policy != "commit" or error is not None:
        return False
    if statuses is None:
        return status is None or status < 400
    return (200 if status is None else status) in statuses


class Action(enum.Enum):
    """What the unit of work will do; the output of :func:`plan_unit_of_work`."""

    JOIN = "join"  # take part in the active transaction
    SAVEPOINT = "savepoint"  # SAVEPOINT inside the active transaction
    BEGIN = "begin"  # a new transaction on a new session (suspending any active one)
    ADOPT = "adopt"  # own the active request session's transaction: it has not begun yet
    NONE = "none"  # no transaction: a session in autocommit mode


@dataclass(frozen=True, slots=True)
class Active:
    """What the planner needs to know about the transaction active in the context."""

    untouched: bool
    """The transaction has not begun: no connection, nothing pending (a fresh request session)."""
    adoptable: bool
    """It is a request session, which a retrying outermost unit may take over."""


def plan_unit_of_work(
    propagation: Propagation,
    active: Active | None,
    *,
    durable: bool = False,
    retries: int = 0,
    can_begin: bool = True,
) -> Action:
    """Decide what a unit of work does, given what is active in its context.

    Args:
        propagation: The unit's propagation.
        active: The active transaction of the same manager, or None.
        durable: The unit must be the outermost transaction (Django's ``durable=True``).
        retries: How many times the unit re-runs on serialization failures.
        can_begin: Whether a new session can be opened (False for the bare ``@transactional``,
            which has no manager).

    Raises:
        NoActiveTransactionError: MANDATORY with nothing active, or nothing to join and no
            manager to begin with.
        TransactionExistsError: NEVER, or ``durable=True``, inside an active transaction.
        ConfigurationError: ``retries`` on a unit that would not be the outermost boundary.
    """
    if propagation is Propagation.REQUIRES_NEW:
        action = Action.BEGIN
    elif propagation is Propagation.NOT_SUPPORTED:
        action = Action.NONE
    elif active is None:
        if propagation is Propagation.MANDATORY:
            raise NoActiveTransactionError(
                "Propagation.MANDATORY requires an active transaction, and none is active here. "
                "Call this from inside a request that depends on db.session, a db.transaction() "
                "block or another @transactional function, or use Propagation.REQUIRED."
            )
        action = (
            Action.NONE
            if propagation in (Propagation.NEVER, Propagation.SUPPORTS)
            else Action.BEGIN
        )
    elif propagation is Propagation.NEVER:
        raise TransactionExistsError(
            "Propagation.NEVER must run outside any transaction, but one is active here. Call "
            "it outside db.transaction() / @transactional code, or use Propagation.NOT_SUPPORTED "
            "to suspend the active transaction."
        )
    elif propagation is Propagation.NESTED:
        action = Action.SAVEPOINT
    else:  # REQUIRED, MANDATORY, SUPPORTS
        action = Action.JOIN

    if durable and active is not None and action is not Action.BEGIN:
        raise TransactionExistsError(
            "durable=True: this unit must be the outermost transaction, so that its commit is "
            "final, but it runs inside another transaction. Call it outside any transaction, or "
            "drop durable=True."
        )
    if retries and action in (Action.JOIN, Action.SAVEPOINT):
        assert active is not None
        if active.adoptable and active.untouched:
            return Action.ADOPT
        raise ConfigurationError(
            f"retries={retries} re-runs the whole unit of work, so it only works at the "
            "outermost transaction boundary, but this unit joins a transaction that is already "
            "running. Put retries= on the outermost @transactional, or use "
            "propagation=Propagation.REQUIRES_NEW."
        )
    if action is Action.BEGIN and not can_begin:
        raise NoActiveTransactionError(
            "The bare @transactional found no session: none was passed as an argument and no "
            "request session or transaction is active in this context. Pass the session "
            "(f(session=...)), call it inside a request or db.transaction(), or decorate it "
            "with @db.transactional, which opens one."
        )
    return action


def should_roll_back(
    error: BaseException,
    rollback_on: Sequence[type[BaseException]] = (),
    no_rollback_on: Sequence[type[BaseException]] = (),
) -> bool:
    """Decide whether ``error`` rolls the unit back: Spring's rollback rules.

    Every exception rolls back unless it matches ``no_rollback_on``; when both lists match,
    the rule naming the closest class in the error's MRO wins (a tie rolls back). Exceptions
    that are not ``Exception`` (cancellation, KeyboardInterrupt) always roll back.
    """
    if not isinstance(error, Exception) or not no_rollback_on:
        return True
    keep = _distance(error, no_rollback_on)
    if keep is None:
        return True
    undo = _distance(error, rollback_on)
    return undo is not None and undo <= keep


def _distance(error: BaseException, types: Sequence[type[BaseException]]) -> int | None:
    mro = type(error).__mro__
    depths = [mro.index(kind) for kind in types if kind in mro]
    return min(depths) if depths else None


# SQLSTATEs (PostgreSQL) and error numbers (MySQL/MariaDB) worth re-running a unit for.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_MYSQL_DEADLOCK = 1213
_MYSQL_LOCK_WAIT_TIMEOUT = 1205


class RetryCause(NamedTuple):
    """Why an error is worth re-running a unit for: the SQLSTATE, and the server's error code."""

    sqlstate: str
    """``40001`` (serialization failure, and MySQL/MariaDB deadlocks), ``40P01``, ``HY000``."""
    kind: str
    """``"serialization failure"``, ``"deadlock"`` or ``"lock wait timeout"``."""
    code: int | None = None
    """The MySQL/MariaDB error number (1213, 1205); None on PostgreSQL."""


_POSTGRES_CAUSES = {"40001": "serialization failure", "40P01": "deadlock"}
_MYSQL_CAUSES = {
    _MYSQL_DEADLOCK: ("40001", "deadlock"),
    _MYSQL_LOCK_WAIT_TIMEOUT: ("HY000", "lock wait timeout"),
}


def retry_cause(error: BaseException, *, lock_timeouts: bool = False) -> RetryCause | None:
    """Tell whether ``error`` is a serialization failure or a deadlock, and which.

    Reads the SQLSTATE or error number, not the class: asyncpg's serialization failure
    reaches SQLAlchemy as a generic ``DBAPIError``.

    Args:
        error: The exception raised by the unit of work.
        lock_timeouts: Also retry MySQL/MariaDB lock wait timeouts (1205).
    """
    if isinstance(error, CommitOutcomeUnknownError):  # it may have committed: never re-run
        return None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for candidate in (current, getattr(current, "orig", None)):
            if candidate is None:
                continue
            args = getattr(candidate, "args", ())  # MySQL/MariaDB: (error number, message)
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                code = args[0]
                if code == _MYSQL_DEADLOCK or (lock_timeouts and code == _MYSQL_LOCK_WAIT_TIMEOUT):
                    sqlstate, kind = _MYSQL_CAUSES[code]
                    return RetryCause(sqlstate, kind, code)
                continue
            state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if state in _POSTGRES_CAUSES:
                return RetryCause(state, _POSTGRES_CAUSES[state])
        current = current.__cause__ or current.__context__
    return None


def is_retryable(error: BaseException, *, lock_timeouts: bool = False) -> bool:
    """Tell whether ``error`` is a serialization failure or a deadlock (see :func:`retry_cause`)."""
    return retry_cause(error, lock_timeouts=lock_timeouts) is not None


def backoff_delay(attempt: int, *, base: float = 0.02, cap: float = 1.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): jittered exponential."""
    ceiling: float = min(cap, base * (2 ** (attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class RetryDecision(NamedTuple):
    """What to do after a unit's attempt failed: wait ``delay`` seconds and re-run, or not."""

    delay: float | None
    """Seconds to wait before the next attempt; None: give up and raise the error."""
    cause: RetryCause | None
    """Why the error was retryable; None: it is not, and nothing is logged."""
    given_up: str | None = None
    """Why a retryable error is not retried: ``"retries exhausted"``, ``"deadline"``, ``"off"``."""


def plan_retry(
    error: BaseException,
    attempt: int,
    options: UnitOptions,
    *,
    elapsed: float,
    enabled: bool = True,
) -> RetryDecision:
    """Decide whether to re-run a unit that failed with ``error``; no I/O.

    Args:
        error: What the attempt raised (after its transaction was rolled back).
        attempt: The attempt that failed, 1-based.
        options: The unit's ``retries``, ``retry_on_lock_timeout`` and ``retry_deadline``.
        elapsed: Seconds since the first attempt began.
        enabled: False while retries are switched off (tests): a retryable error is raised.
    """
    if not options.retries:
        return RetryDecision(None, None)
    cause = retry_cause(error, lock_timeouts=options.retry_on_lock_timeout)
    if cause is None:
        return RetryDecision(None, None)
    if not enabled:
        return RetryDecision(None, cause, "retries are switched off")
    if attempt > options.retries:
        return RetryDecision(None, cause, f"retries={options.retries} exhausted")
    delay = backoff_delay(attempt)
    deadline = options.retry_deadline
    if deadline is not None and elapsed + delay > deadline:
        return RetryDecision(None, cause, f"retry_deadline={deadline:g}s reached")
    return RetryDecision(delay, cause)
