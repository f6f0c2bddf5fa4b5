"""The pure planner: propagation table, rollback rules, retryable errors, backoff."""

from __future__ import annotations

import pytest

from fastapi_dbsession import (
    ConfigurationError,
    NoActiveTransactionError,
    Propagation,
    TransactionExistsError,
)
from fastapi_dbsession.propagation import (
    Action,
    Active,
    backoff_delay,
    is_retryable,
    plan_unit_of_work,
    should_roll_back,
)

RUNNING = Active(untouched=False, adoptable=False)
FRESH_REQUEST = Active(untouched=True, adoptable=True)
P = Propagation


@pytest.mark.parametrize(
    ("propagation", "active", "expected"),
    [
        (P.REQUIRED, None, Action.BEGIN),
        (P.REQUIRED, RUNNING, Action.JOIN),
        (P.REQUIRES_NEW, None, Action.BEGIN),
        (P.REQUIRES_NEW, RUNNING, Action.BEGIN),
        (P.NESTED, None, Action.BEGIN),
        (P.NESTED, RUNNING, Action.SAVEPOINT),
        (P.MANDATORY, RUNNING, Action.JOIN),
        (P.MANDATORY, None, NoActiveTransactionError),
        (P.NEVER, None, Action.NONE),
        (P.NEVER, RUNNING, TransactionExistsError),
        (P.SUPPORTS, None, Action.NONE),
        (P.SUPPORTS, RUNNING, Action.JOIN),
        (P.NOT_SUPPORTED, None, Action.NONE),
        (P.NOT_SUPPORTED, RUNNING, Action.NONE),
    ],
)
def test_propagation_table(
    propagation: Propagation, active: Active | None, expected: Action | type[Exception]
) -> None:
    if isinstance(expected, Action):
        assert plan_unit_of_work(propagation, active) is expected
    else:
        with pytest.raises(expected):
            plan_unit_of_work(propagation, active)


def test_durable_inside_a_transaction_raises() -> None:
    assert plan_unit_of_work(P.REQUIRED, None, durable=True) is Action.BEGIN
    assert plan_unit_of_work(P.REQUIRES_NEW, RUNNING, durable=True) is Action.BEGIN
    with pytest.raises(TransactionExistsError, match="durable=True"):
        plan_unit_of_work(P.REQUIRED, RUNNING, durable=True)


def test_retries_only_at_the_outermost_boundary() -> None:
    assert plan_unit_of_work(P.REQUIRED, None, retries=3) is Action.BEGIN
    assert plan_unit_of_work(P.REQUIRES_NEW, RUNNING, retries=3) is Action.BEGIN
    assert plan_unit_of_work(P.REQUIRED, FRESH_REQUEST, retries=3) is Action.ADOPT
    with pytest.raises(ConfigurationError, match="outermost"):
        plan_unit_of_work(P.REQUIRED, RUNNING, retries=3)
    with pytest.raises(ConfigurationError, match="outermost"):
        plan_unit_of_work(P.NESTED, RUNNING, retries=1)


def test_bare_decorator_cannot_begin() -> None:
    assert plan_unit_of_work(P.REQUIRED, RUNNING, can_begin=False) is Action.JOIN
    with pytest.raises(NoActiveTransactionError, match="@db.transactional"):
        plan_unit_of_work(P.REQUIRED, None, can_begin=False)


class BusinessError(Exception):
    pass


class PaymentDeclined(BusinessError):
    pass


class SoftDeclined(PaymentDeclined):
    pass


@pytest.mark.parametrize(
    ("error", "rollback_on", "no_rollback_on", "expected"),
    [
        (ValueError(), (), (), True),
        (BusinessError(), (), (BusinessError,), False),
        (PaymentDeclined(), (), (BusinessError,), False),
        (PaymentDeclined(), (PaymentDeclined,), (BusinessError,), True),  # closer rule wins
        (SoftDeclined(), (PaymentDeclined,), (SoftDeclined,), False),
        (ValueError(), (), (BusinessError,), True),
        (KeyboardInterrupt(), (), (BaseException,), True),  # never kept
    ],
)
def test_rollback_rules(
    error: BaseException,
    rollback_on: tuple[type[BaseException], ...],
    no_rollback_on: tuple[type[BaseException], ...],
    expected: bool,
) -> None:
    assert should_roll_back(error, rollback_on, no_rollback_on) is expected


class FakeDriverError(Exception):
    """Shaped like the driver exceptions SQLAlchemy wraps: sqlstate / pgcode / errno args."""

    def __init__(self, *args: object, sqlstate: str | None = None, pgcode: str | None = None):
        super().__init__(*args)
        self.sqlstate = sqlstate
        self.pgcode = pgcode


class Wrapped(Exception):
    def __init__(self, orig: BaseException) -> None:
        super().__init__(str(orig))
        self.orig = orig


@pytest.mark.parametrize(
    ("error", "lock_timeouts", "expected"),
    [
        (Wrapped(FakeDriverError(sqlstate="40001")), False, True),  # psycopg 3, asyncpg
        (Wrapped(FakeDriverError(sqlstate="40P01")), False, True),
        (Wrapped(FakeDriverError(pgcode="40001")), False, True),  # psycopg2
        (Wrapped(FakeDriverError(sqlstate="23505")), False, False),  # unique violation
        (Wrapped(FakeDriverError(1213, "Deadlock found")), False, True),  # MySQL/MariaDB
        (Wrapped(FakeDriverError(1205, "Lock wait timeout")), False, False),
        (Wrapped(FakeDriverError(1205, "Lock wait timeout")), True, True),
        (ValueError("nothing to do with databases"), False, False),
    ],
)
def test_retryable_errors_are_recognised_by_code(
    error: BaseException, lock_timeouts: bool, expected: bool
) -> None:
    assert is_retryable(error, lock_timeouts=lock_timeouts) is expected


def test_retryable_cause_is_found_through_the_chain() -> None:
    outer = RuntimeError("wrapped again")
    outer.__cause__ = Wrapped(FakeDriverError(sqlstate="40001"))
    assert is_retryable(outer)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt in range(1, 12):
        delay = backoff_delay(attempt)
        ceiling = min(1.0, 0.02 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
