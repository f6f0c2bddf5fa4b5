"""The pure planner: propagation table, rollback rules, retryable errors, backoff."""

from __future__ import annotations

import pytest

from fastapi_dbsession import (
    ConfigurationError,
    NoActiveTransactionError,
    Propagation,
    TransactionExistsError,
    propagation,
)
from fastapi_dbsession.propagation import (
    Action,
    Active,
    backoff_delay,
    check_policy,
    is_retryable,
    make_options,
    plan_retry,
    plan_unit_of_work,
    should_commit,
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


# -- the exact figures and messages the docs state (found by mutation testing: each assertion
# below failed on a mutant that the tests above let through) -------------------------------


def test_a_cyclic_exception_chain_is_walked_once() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first  # what `raise ... from` loops make
    assert is_retryable(first) is False


def test_a_wrapped_object_without_args_is_not_retryable() -> None:
    class Odd(Exception):
        orig = object()  # some wrappers carry a non-exception

    assert is_retryable(Odd()) is False


def test_lock_wait_timeouts_are_not_retried_by_default() -> None:
    assert is_retryable(Wrapped(FakeDriverError(1205, "Lock wait timeout"))) is False


def test_backoff_is_half_the_ceiling_plus_up_to_half_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(propagation.random, "uniform", lambda low, high: high)
    assert [backoff_delay(n) for n in (1, 2, 3)] == [0.02, 0.04, 0.08]
    monkeypatch.setattr(propagation.random, "uniform", lambda low, high: low)
    assert [backoff_delay(n) for n in (1, 2, 3)] == [0.01, 0.02, 0.04]


SERIALIZATION = Wrapped(FakeDriverError(sqlstate="40001"))
LOCK_WAIT = Wrapped(FakeDriverError(1205, "Lock wait timeout"))


def _delays(error: BaseException, options: object, attempts: int) -> list[float | None]:
    return [
        plan_retry(error, n, options, elapsed=0.0).delay  # type: ignore[arg-type]
        for n in range(1, attempts + 1)
    ]


def test_retries_n_means_n_reruns_after_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """retries=2: attempts 1 and 2 are followed by a re-run, after the backoff; attempt 3 is
    the last one (3 attempts in all)."""
    monkeypatch.setattr(propagation.random, "uniform", lambda low, high: high)
    assert _delays(SERIALIZATION, make_options(retries=2), 3) == [0.02, 0.04, None]
    assert _delays(SERIALIZATION, make_options(), 1) == [None]  # retries=0: never
    decision = plan_retry(SERIALIZATION, 3, make_options(retries=2), elapsed=0.0)
    assert decision.given_up == "retries=2 exhausted"


def test_errors_that_are_not_retryable_are_raised_at_once() -> None:
    options = make_options(retries=3)
    assert _delays(Wrapped(FakeDriverError(sqlstate="23505")), options, 1) == [None]
    assert _delays(ValueError("business"), options, 1) == [None]
    assert _delays(LOCK_WAIT, options, 1) == [None]
    assert _delays(LOCK_WAIT, make_options(retries=3, retry_on_lock_timeout=True), 1) != [None]


def test_options_keep_what_was_asked() -> None:
    assert make_options().retry_on_lock_timeout is False
    assert make_options(retry_on_lock_timeout=True).retry_on_lock_timeout is True
    assert make_options(rollback_on=[ValueError]).rollback_on == (ValueError,)
    assert make_options(no_rollback_on=[KeyError]).no_rollback_on == (KeyError,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"propagation": "requires_new"},
            "propagation='requires_new' is not a Propagation. Use e.g. "
            "propagation=Propagation.REQUIRES_NEW (from fastapi_dbsession import Propagation).",
        ),
        (
            {"retries": -1},
            "retries=-1 must be a whole number >= 0: how many times the unit re-runs after a "
            "serialization failure or deadlock (0, the default, never re-runs).",
        ),
        (
            {"timeout": 0},
            "timeout=0 must be a number of seconds > 0, e.g. timeout=5.0 (leave it out for no "
            "limit).",
        ),
        (
            {"rollback_on": ValueError},  # a class, not a tuple of classes
            "rollback_on=<class 'ValueError'> must be a tuple of exception classes, e.g. "
            "rollback_on=(PaymentDeclined,) (an empty tuple for none).",
        ),
        (
            {"no_rollback_on": ("ValueError",)},  # a name, not a class
            "no_rollback_on=('ValueError',) must be a tuple of exception classes, e.g. "
            "no_rollback_on=(PaymentDeclined,) (an empty tuple for none).",
        ),
    ],
)
def test_bad_options_are_refused_with_the_fix(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_options(**options)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_unknown_policy_names_the_three() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_policy("sometimes", argument="commit_policy")
    assert str(caught.value) == (
        "commit_policy='sometimes' is not a commit policy. Use one of 'commit', 'manual', "
        "'read_only': 'commit' commits when the endpoint succeeds, 'manual' never commits for "
        "you, 'read_only' always rolls back."
    )


@pytest.mark.parametrize(("status", "expected"), [(None, True), (399, True), (400, False)])
def test_the_first_error_status_is_400(status: int | None, expected: bool) -> None:
    assert should_commit("commit", None, status) is expected


def test_a_tie_between_the_rules_rolls_back() -> None:
    assert should_roll_back(ValueError(), (ValueError,), (ValueError,)) is True


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: plan_unit_of_work(P.MANDATORY, None),
            NoActiveTransactionError,
            "Propagation.MANDATORY requires an active transaction, and none is active here. "
            "Call this from inside a request that depends on db.session, a db.transaction() "
            "block or another @transactional function, or use Propagation.REQUIRED.",
        ),
        (
            lambda: plan_unit_of_work(P.NEVER, RUNNING),
            TransactionExistsError,
            "Propagation.NEVER must run outside any transaction, but one is active here. Call "
            "it outside db.transaction() / @transactional code, or use Propagation.NOT_SUPPORTED "
            "to suspend the active transaction.",
        ),
        (
            lambda: plan_unit_of_work(P.REQUIRED, RUNNING, durable=True),
            TransactionExistsError,
            "durable=True: this unit must be the outermost transaction, so that its commit is "
            "final, but it runs inside another transaction. Call it outside any transaction, or "
            "drop durable=True.",
        ),
        (
            lambda: plan_unit_of_work(P.REQUIRED, RUNNING, retries=3),
            ConfigurationError,
            "retries=3 re-runs the whole unit of work, so it only works at the outermost "
            "transaction boundary, but this unit joins a transaction that is already running. "
            "Put retries= on the outermost @transactional, or use "
            "propagation=Propagation.REQUIRES_NEW.",
        ),
        (
            lambda: plan_unit_of_work(P.REQUIRED, None, can_begin=False),
            NoActiveTransactionError,
            "The bare @transactional found no session: none was passed as an argument and no "
            "request session or transaction is active in this context. Pass the session "
            "(f(session=...)), call it inside a request or db.transaction(), or decorate it "
            "with @db.transactional, which opens one.",
        ),
    ],
)
def test_planner_errors_say_what_is_wrong_and_the_fix(
    call: object, error: type[Exception], message: str
) -> None:
    """The whole message: it is the user's only guide to the fix."""
    with pytest.raises(error) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value) == message


# -- options, the commit rule and retry decisions, field by field (mutation testing, issue 18:
# each test below fails on a mutant of propagation.py that every other fast test let through) --


def test_default_options_are_the_documented_ones() -> None:
    """Leaving every option out gives a read-write, non-durable unit with no limits."""
    assert make_options() == propagation.UnitOptions()
    options = make_options()
    assert (options.read_only, options.durable, options.isolation_level) == (False, False, None)
    assert (options.timeout, options.retries, options.retry_deadline) == (None, 0, None)


def test_options_keep_every_value_that_was_asked() -> None:
    options = make_options(
        propagation=P.NESTED,
        isolation_level="serializable",
        read_only=True,
        timeout=2.5,
        durable=True,
        retries=4,
        retry_deadline=3.0,
    )
    assert options.propagation is P.NESTED
    assert options.isolation_level == "SERIALIZABLE"  # spelled as SQLAlchemy expects
    assert (options.read_only, options.durable) == (True, True)
    assert (options.timeout, options.retries, options.retry_deadline) == (2.5, 4, 3.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"isolation_level": "sometimes"},
            "isolation_level='sometimes' is not an isolation level.",
        ),
        ({"read_only": "no"}, "read_only='no' must be True or False, not str."),
        ({"durable": 1}, "durable=1 must be True or False, not int."),
        (
            {"retry_on_lock_timeout": "yes"},
            "retry_on_lock_timeout='yes' must be True or False, not str.",
        ),
        ({"retries": True}, "retries=True must be a whole number >= 0"),
        ({"retries": 1.5}, "retries=1.5 must be a whole number >= 0"),
        ({"timeout": True}, "timeout=True must be a number of seconds > 0"),
        ({"timeout": "5"}, "timeout='5' must be a number of seconds > 0"),
        (
            {"retries": 1, "retry_deadline": -1.0},
            "retry_deadline=-1.0 must be a number of seconds > 0, e.g. retry_deadline=5.0",
        ),
        (
            {"retry_deadline": 2.0},
            "retry_deadline=2.0 bounds the time spent retrying, but retries is 0, so nothing is "
            "retried. Set retries=N too, e.g. retries=5, retry_deadline=2.0.",
        ),
    ],
)
def test_each_bad_option_is_named_in_its_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_options(**options)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message), str(caught.value)


def test_sub_second_limits_are_accepted() -> None:
    options = make_options(timeout=0.5, retries=1, retry_deadline=0.25)
    assert (options.timeout, options.retry_deadline) == (0.5, 0.25)


@pytest.mark.parametrize(
    ("policy", "error", "status", "statuses", "expected"),
    [
        ("manual", None, 200, None, False),  # never commits for you
        ("read_only", None, 200, None, False),
        ("commit", ValueError(), 200, None, False),  # an error always rolls back
        ("commit", ValueError(), 200, {200}, False),
        ("commit", None, None, {200}, True),  # no status known: 200
        ("commit", None, None, {201}, False),
        ("commit", None, 201, {201}, True),
        ("commit", None, 200, {201}, False),
        ("commit", None, 302, range(200, 400), True),
        ("commit", None, 400, range(200, 400), False),
    ],
)
def test_the_commit_rule(
    policy: str, error: BaseException | None, status: int | None, statuses: object, expected: bool
) -> None:
    """The table of docs/request-session.md: policy, error, status, commit_statuses."""
    assert should_commit(policy, error, status, statuses) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "active",
    [
        Active(untouched=True, adoptable=False),  # a db.transaction() block, not begun
        Active(untouched=False, adoptable=True),  # a request session that already queried
    ],
)
def test_retries_adopt_only_a_request_session_that_has_not_begun(active: Active) -> None:
    with pytest.raises(ConfigurationError, match="outermost"):
        plan_unit_of_work(P.REQUIRED, active, retries=2)


@pytest.mark.parametrize(
    ("error", "lock_timeouts", "cause"),
    [
        (SERIALIZATION, False, ("40001", "serialization failure", None)),
        (Wrapped(FakeDriverError(sqlstate="40P01")), False, ("40P01", "deadlock", None)),
        (Wrapped(FakeDriverError(1213, "Deadlock found")), False, ("40001", "deadlock", 1213)),
        (LOCK_WAIT, True, ("HY000", "lock wait timeout", 1205)),
    ],
)
def test_the_retry_cause_names_the_sqlstate_kind_and_code(
    error: BaseException, lock_timeouts: bool, cause: tuple[str, str, int | None]
) -> None:
    """What the retry log line shows (docs/transactions.md: "retrying ... 40P01 deadlock")."""
    assert tuple(propagation.retry_cause(error, lock_timeouts=lock_timeouts) or ()) == cause
    options = make_options(retries=1, retry_on_lock_timeout=lock_timeouts)
    assert plan_retry(error, 1, options, elapsed=0.0).cause == cause


def test_a_mysql_error_number_is_read_before_an_sqlstate_further_down() -> None:
    """A MySQL error that is not a deadlock (1062, duplicate key) is not retried, whatever
    its chain holds; the chain is still walked past an error with no number."""
    duplicate = Wrapped(FakeDriverError(1062, "Duplicate entry", sqlstate="40001"))
    assert propagation.retry_cause(duplicate) is None
    assert propagation.retry_cause(LOCK_WAIT) is None  # lock wait timeouts: only when asked
    outer = Wrapped(FakeDriverError("no number"))
    outer.__cause__ = Wrapped(FakeDriverError(1213, "Deadlock found"))
    assert propagation.retry_cause(outer) == ("40001", "deadlock", 1213)


def test_a_retryable_error_that_is_not_retried_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """The given-up reason and the cause reach the log line of the final failure."""
    monkeypatch.setattr(propagation.random, "uniform", lambda low, high: high)
    cause = ("40001", "serialization failure", None)
    off = plan_retry(SERIALIZATION, 1, make_options(retries=2), elapsed=0.0, enabled=False)
    assert off == (None, cause, "retries are switched off")
    spent = plan_retry(SERIALIZATION, 3, make_options(retries=2), elapsed=0.0)
    assert spent == (None, cause, "retries=2 exhausted")
    options = make_options(retries=5, retry_deadline=1.0)
    # attempt 1 waits 0.02 s: 0.97 + 0.02 stays inside the deadline, 0.99 + 0.02 does not
    assert plan_retry(SERIALIZATION, 1, options, elapsed=0.97) == (0.02, cause, None)
    assert plan_retry(SERIALIZATION, 1, options, elapsed=0.98) == (0.02, cause, None)
    late = plan_retry(SERIALIZATION, 1, options, elapsed=0.99)
    assert late == (None, cause, "retry_deadline=1s reached")
