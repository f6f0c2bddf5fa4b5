"""@transactional, db.transaction() and propagation on real databases, sync and async.

Each scenario is written once (see tests/units.py) and runs on the sync API and on the async
API, against SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from fastapi_dbsession import (
    ConfigurationError,
    ConnectionDeadlockError,
    DatabaseSessionManager,
    DBSessionWarning,
    NoActiveTransactionError,
    Propagation,
    SessionFinishedError,
    TransactionExistsError,
    UnexpectedRollbackError,
)
from tests.conftest import Backend, PoolWatch
from tests.units import AsyncUnits, SyncUnits


class Boom(Exception):
    pass


class Declined(Exception):
    pass


@pytest.fixture
def db(backend: Backend) -> DatabaseSessionManager:
    return DatabaseSessionManager(backend.url, async_url=backend.async_url)


@pytest.fixture(params=["sync", "async"])
def units(request: pytest.FixtureRequest, db: DatabaseSessionManager) -> Iterator[SyncUnits]:
    yield SyncUnits(db) if request.param == "sync" else AsyncUnits(db)
    db.dispose()


def engine_of(units: SyncUnits) -> Any:
    return units.db.async_engine if units.is_async else units.db.engine


def test_required_joins_the_enclosing_transaction(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional()
        def inner(session: Any) -> Any:
            u.add_item(session, "inner")
            return session

        with u.transaction() as outer:
            u.add_item(outer, "outer")
            assert inner() is outer  # the current session was passed in
            with u.transaction() as joined:
                assert joined is outer
                assert u.current() is outer

    units.run(scenario)
    assert backend.names() == ["inner", "outer"]


def test_required_on_an_auto_begun_session_joins(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        with u.transaction() as outer:
            u.execute(outer, "SELECT 1")  # the session has begun: REQUIRED must not BEGIN again
            with u.transaction(propagation=Propagation.REQUIRED) as inner:
                u.add_item(inner, "ada")

    units.run(scenario)
    assert backend.names() == ["ada"]


def test_nested_failure_rolls_back_to_the_savepoint_only(
    units: SyncUnits, backend: Backend
) -> None:
    def scenario(u: SyncUnits) -> None:
        with u.transaction() as outer:
            u.add_item(outer, "kept")
            with pytest.raises(Boom), u.transaction(propagation=Propagation.NESTED) as inner:
                u.add_item(inner, "undone")
                raise Boom
            u.add_item(outer, "after")
            assert u.names(outer) == ["after", "kept"]

    units.run(scenario)
    assert backend.names() == ["after", "kept"]


def test_nested_without_a_transaction_begins_one(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        with u.transaction(propagation=Propagation.NESTED) as session:
            u.add_item(session, "ada")

    units.run(scenario)
    assert backend.names() == ["ada"]


def test_swallowed_inner_failure_makes_the_outer_commit_raise(
    units: SyncUnits, backend: Backend
) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional()
        def inner(session: Any) -> None:
            u.add_item(session, "inner")
            raise Boom("inner failed")

        with pytest.raises(UnexpectedRollbackError, match="Boom: inner failed"):  # noqa: SIM117
            with u.transaction() as outer:
                u.add_item(outer, "outer")
                with contextlib.suppress(Boom):  # swallowed: the outer transaction is doomed
                    inner()

    units.run(scenario)
    assert backend.count() == 0


def test_a_doomed_savepoint_rolls_back_alone(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional()
        def inner(session: Any) -> None:
            u.add_item(session, "inner")
            raise Boom("inner failed")

        with u.transaction() as outer:
            u.add_item(outer, "outer")
            with pytest.raises(UnexpectedRollbackError, match="Boom: inner failed"):  # noqa: SIM117
                with u.transaction(propagation=Propagation.NESTED) as savepoint:
                    u.add_item(savepoint, "in-savepoint")
                    with contextlib.suppress(Boom):  # swallowed inside the savepoint
                        inner()
            u.add_item(outer, "after")  # the outer transaction is not doomed

    units.run(scenario)
    assert backend.names() == ["after", "outer"]


def test_requires_new_commits_independently(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional(propagation=Propagation.REQUIRES_NEW)
        def audit(session: Any, message: str) -> Any:
            u.add_item(session, message)
            return session

        with pytest.raises(Boom), u.transaction() as outer:
            u.execute(outer, "SELECT 1")
            assert audit(message="audit") is not outer
            u.add_item(outer, "order")  # (SQLite has one writer: the outer writes after)
            raise Boom

    units.run(scenario)
    assert backend.names() == ["audit"]


def test_requires_new_with_a_pool_of_one_raises_instead_of_deadlocking(
    backend: Backend, side: str
) -> None:
    options = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 30}
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url, engine_options=options)
    units = SyncUnits(db) if side == "sync" else AsyncUnits(db)

    def scenario(u: SyncUnits) -> None:
        with u.transaction() as outer:
            u.execute(outer, "SELECT 1")  # holds the only connection
            with (
                pytest.raises(ConnectionDeadlockError, match="REQUIRES_NEW"),
                u.transaction(propagation=Propagation.REQUIRES_NEW),
            ):
                pass

    units.run(scenario)
    units.dispose()


def test_mandatory_never_supports_not_supported(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        with (
            pytest.raises(NoActiveTransactionError, match="MANDATORY"),
            u.transaction(propagation=Propagation.MANDATORY),
        ):
            pass
        with u.transaction() as outer:
            with u.transaction(propagation=Propagation.MANDATORY) as joined:
                assert joined is outer
            with (
                pytest.raises(TransactionExistsError, match="NEVER"),
                u.transaction(propagation=Propagation.NEVER),
            ):
                pass
            with u.transaction(propagation=Propagation.SUPPORTS) as joined:
                assert joined is outer
            with u.transaction(propagation=Propagation.NOT_SUPPORTED) as plain:
                assert plain is not outer
                u.add_item(plain, "autocommitted")  # no transaction: committed at once
                with u.transaction() as fresh:  # the suspended one is not joined
                    assert fresh is not outer
            u.add_item(outer, "rolled-back")
            u.rollback(outer)
        with u.transaction(propagation=Propagation.NEVER) as plain:
            u.add_item(plain, "never")
        with u.transaction(propagation=Propagation.SUPPORTS) as plain:
            u.add_item(plain, "supports")

    units.run(scenario)
    assert backend.names() == ["autocommitted", "never", "supports"]


def test_durable_inside_a_transaction_raises(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        with u.transaction(durable=True) as session:
            u.add_item(session, "durable")
            with (
                pytest.raises(TransactionExistsError, match="durable"),
                u.transaction(durable=True),
            ):
                pass

    units.run(scenario)
    assert backend.names() == ["durable"]


def test_read_only_rolls_back_and_the_database_refuses_writes(
    units: SyncUnits, backend: Backend
) -> None:
    def scenario(u: SyncUnits) -> None:
        if backend.name == "sqlite":  # no read-only transactions: rolled back at the end
            with u.transaction(read_only=True) as session:
                u.add_item(session, "discarded")
            return
        # the server's own refusal, not any error: 25006 read_only_sql_transaction (PostgreSQL),
        # 1792 "Cannot execute statement in a READ ONLY transaction" (MariaDB)
        with pytest.raises(DBAPIError) as refused, u.transaction(read_only=True) as session:
            u.add_item(session, "refused")
        orig = refused.value.orig
        if backend.name == "postgresql":
            assert (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == "25006"
        else:
            assert orig.args[0] == 1792  # type: ignore[union-attr]

    units.run(scenario)
    assert backend.count() == 0


def test_isolation_level_applies_at_transaction_start(units: SyncUnits, backend: Backend) -> None:
    level, query, expected = {
        "postgresql": ("SERIALIZABLE", "SHOW transaction_isolation", "SERIALIZABLE"),
        "mariadb": ("SERIALIZABLE", "SELECT @@tx_isolation", "SERIALIZABLE"),
        "sqlite": ("READ UNCOMMITTED", "PRAGMA read_uncommitted", "1"),
    }[backend.name]

    def scenario(u: SyncUnits) -> tuple[str, str]:
        with u.transaction(isolation_level=level) as session:
            inside = str(u.execute(session, query).scalar()).upper()
        with u.transaction() as session:  # the pool resets the connection afterwards
            after = str(u.execute(session, query).scalar()).upper()
        return inside, after

    inside, after = units.run(scenario)  # type: ignore[misc]
    assert inside == expected
    assert after != expected


def test_statement_timeout(units: SyncUnits, backend: Backend) -> None:
    if backend.name == "sqlite":

        def unenforced(u: SyncUnits) -> None:
            with pytest.warns(DBSessionWarning, match="not enforced on sqlite"):  # noqa: SIM117
                with u.transaction(timeout=0.2) as session:
                    u.execute(session, "SELECT 1")

        units.run(unenforced)
        return
    sleep = {"postgresql": "SELECT pg_sleep(2)", "mariadb": "SELECT SLEEP(2)"}[backend.name]

    def scenario(u: SyncUnits) -> None:
        with pytest.raises(DBAPIError, match="timeout|max_statement_time"):  # noqa: SIM117
            with u.transaction(timeout=0.2) as session:
                u.execute(session, sleep)
        with u.transaction() as session:  # the timeout ended with its transaction
            u.execute(session, "SELECT 1")
            if backend.name == "mariadb":
                assert u.execute(session, "SELECT @@max_statement_time").scalar() == 0

    units.run(scenario)


def test_options_on_a_transaction_already_running_raise(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        with u.transaction() as outer:
            u.execute(outer, "SELECT 1")
            with pytest.raises(ConfigurationError, match="already running"):  # noqa: SIM117
                with u.transaction(isolation_level="SERIALIZABLE"):
                    pass

    units.run(scenario)


def test_rollback_rules(units: SyncUnits, backend: Backend) -> None:
    def scenario(u: SyncUnits) -> None:
        with pytest.raises(Declined), u.transaction(no_rollback_on=(Declined,)) as session:
            u.add_item(session, "kept-despite-error")
            raise Declined
        with (
            pytest.raises(Boom),
            u.transaction(no_rollback_on=(Declined,)) as session,
        ):
            u.add_item(session, "rolled-back")
            raise Boom

    units.run(scenario)
    assert backend.names() == ["kept-despite-error"]


def test_on_commit_runs_after_the_outermost_commit_only(units: SyncUnits, backend: Backend) -> None:
    calls: list[str] = []

    def scenario(u: SyncUnits) -> None:
        db = u.db
        with u.transaction() as outer:
            db.on_commit(lambda: calls.append("outer"))
            with u.transaction(propagation=Propagation.NESTED) as inner:
                u.add_item(inner, "inner")
                db.on_commit(lambda: calls.append("released-savepoint"))
            assert calls == []  # releasing a savepoint is not a commit
            with pytest.raises(Boom), u.transaction(propagation=Propagation.NESTED):
                db.on_commit(lambda: calls.append("rolled-back-savepoint"))
                db.on_rollback(lambda: calls.append("savepoint-rollback"))
                raise Boom
            assert calls == ["savepoint-rollback"]
            u.add_item(outer, "outer")
            assert backend.count() == 0  # not committed yet
        assert calls == ["savepoint-rollback", "outer", "released-savepoint"]
        with pytest.raises(Boom), u.transaction():
            db.on_commit(lambda: calls.append("never"))
            db.on_rollback(lambda: calls.append("rolled-back"))
            raise Boom

    units.run(scenario)
    assert calls == ["savepoint-rollback", "outer", "released-savepoint", "rolled-back"]
    assert backend.names() == ["inner", "outer"]


def test_async_callback_of_a_sync_unit_outside_any_loop_runs(
    db: DatabaseSessionManager, backend: Backend
) -> None:
    calls: list[str] = []

    async def notify() -> None:
        calls.append("ran")

    with db.transaction() as session:
        SyncUnits(db).add_item(session, "ada")
        db.on_commit(notify)
    db.dispose()
    assert calls == ["ran"]


def test_async_on_commit_callbacks_are_awaited(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    calls: list[str] = []

    async def notify() -> None:
        calls.append("awaited")

    def scenario(u: SyncUnits) -> None:
        with u.transaction() as session:
            u.add_item(session, "ada")
            db.on_commit(notify)

    AsyncUnits(db).run(scenario)
    assert calls == ["awaited"]


def test_failing_callback_is_logged_or_propagates(
    units: SyncUnits, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise Boom("callback failed")

    def scenario(u: SyncUnits) -> None:
        with u.transaction() as session:
            u.add_item(session, "robust")
            u.db.on_commit(fail)
        with pytest.raises(Boom), u.transaction() as session:
            u.add_item(session, "strict")
            u.db.on_commit(fail, robust=False)

    with caplog.at_level(logging.ERROR, logger="fastapi_dbsession"):
        units.run(scenario)
    assert backend.names() == ["robust", "strict"]  # both committed before the callbacks ran
    assert "callback" in caplog.text


def test_hooks_need_a_transaction(db: DatabaseSessionManager) -> None:
    with pytest.raises(NoActiveTransactionError, match="on_commit"):
        db.on_commit(lambda: None)


def test_bare_decorator_needs_a_session(units: SyncUnits) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional(bound=False)
        def work(session: Any) -> None:
            u.add_item(session, "x")

        with pytest.raises(NoActiveTransactionError, match="@db.transactional"):
            work()

    units.run(scenario)


def test_bare_decorator_joins_the_context_and_bound_one_opens(
    units: SyncUnits, backend: Backend
) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional(bound=False)
        def bare(session: Any, name: str) -> Any:
            u.add_item(session, name)
            return session

        @u.transactional()
        def bound(session: Any) -> None:
            u.add_item(session, "bound")

        bound()  # opens and commits its own
        with u.transaction() as outer:
            assert bare(name="bare") is outer
            assert bare(session=outer, name="passed") is outer  # passed explicitly

    units.run(scenario)
    assert backend.names() == ["bare", "bound", "passed"]


def test_a_session_used_after_its_unit_fails_clearly(units: SyncUnits) -> None:
    def scenario(u: SyncUnits) -> None:
        @u.transactional()
        def leak(session: Any) -> Any:
            return session

        session = leak()
        with pytest.raises(SessionFinishedError, match="has ended"):
            u.execute(session, "SELECT 1")

    units.run(scenario)


def test_connections_are_returned(units: SyncUnits, backend: Backend) -> None:
    watch = PoolWatch(engine_of(units))

    def scenario(u: SyncUnits) -> None:
        with u.transaction() as session:
            with u.transaction(propagation=Propagation.REQUIRES_NEW) as other:
                u.add_item(other, "b")
            u.add_item(session, "a")
            with pytest.raises(Boom), u.transaction(propagation=Propagation.NESTED) as inner:
                u.add_item(inner, "c")
                raise Boom

    units.run(scenario)
    assert watch.out == 0
    assert backend.names() == ["a", "b"]
