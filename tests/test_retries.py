"""retries=N under real contention: SERIALIZABLE transfers (PostgreSQL), deadlocks (MariaDB).

Each test runs the same transfers twice: without retries some fail with the database's own
serialization failure or deadlock error; with retries every one succeeds, the total balance
is exactly what it was, and the on_commit hook of each transfer ran once (never for a failed
attempt).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from tests.conftest import SERVERS, Backend
from tests.models import Account

PAIRS = 6  # concurrent transfer pairs: A->B and B->A at the same moment
START = 1000


@pytest.fixture(params=[SERVERS["postgresql"], SERVERS["mariadb"]])
def contended(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    from tests.conftest import _make_backend

    yield from _make_backend(request.param, request, tmp_path)


def _seed(backend: Backend) -> None:
    engine = backend.admin_engine()
    with engine.begin() as connection:
        connection.execute(
            insert(Account),
            [{"owner": f"acct-{n}", "balance": START} for n in range(2 * PAIRS)],
        )
    engine.dispose()


def _total(backend: Backend) -> int:
    return int(_scalar(backend, "SELECT sum(balance) FROM accounts"))


def _scalar(backend: Backend, sql: str) -> Any:
    engine = backend.admin_engine()
    with engine.connect() as connection:
        value = connection.scalar(text(sql))
    engine.dispose()
    return value


def _plan() -> list[tuple[str, str]]:
    """Each pair transfers in both directions at once: a guaranteed conflict."""
    transfers = []
    for n in range(PAIRS):
        a, b = f"acct-{2 * n}", f"acct-{2 * n + 1}"
        transfers += [(a, b), (b, a)]
    return transfers


def _make_transfer(db: DatabaseSessionManager, dialect: str, retries: int, hooks: list[str]):  # type: ignore[no-untyped-def]
    isolation = "SERIALIZABLE" if dialect == "postgresql" else None

    @db.transactional(retries=retries, isolation_level=isolation)
    def transfer(session: Session, source: str, target: str, barrier: threading.Barrier) -> None:
        hooks.append("attempt")
        first = session.scalar(
            select(Account).where(Account.owner == source).with_for_update()
            if dialect != "postgresql"
            else select(Account).where(Account.owner == source)
        )
        assert first is not None
        if not getattr(transfer_attempted, source + target, False):
            setattr(transfer_attempted, source + target, True)
            barrier.wait(timeout=10)  # both directions hold/read their first row now
        second = session.scalar(
            select(Account).where(Account.owner == target).with_for_update()
            if dialect != "postgresql"
            else select(Account).where(Account.owner == target)
        )
        assert second is not None
        first.balance -= 10
        second.balance += 10
        session.flush()
        db.on_commit(lambda: hooks.append(f"{source}->{target}"))

    transfer_attempted = threading.local()
    return transfer


def _run_sync(
    db: DatabaseSessionManager, dialect: str, retries: int
) -> tuple[list[BaseException], list[str]]:
    hooks: list[str] = []
    transfer = _make_transfer(db, dialect, retries, hooks)
    barriers = {}
    for n in range(PAIRS):
        barriers[n] = threading.Barrier(2)
    failures: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=2 * PAIRS) as pool:
        futures = [
            pool.submit(transfer, source=source, target=target, barrier=barriers[index // 2])
            for index, (source, target) in enumerate(_plan())
        ]
        for future in futures:
            try:
                future.result(timeout=60)
            except DBAPIError as error:
                failures.append(error)
    db.dispose()
    return failures, hooks


def test_sync_transfers_fail_without_retries_and_all_succeed_with_them(
    contended: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(contended)
    dialect = contended.name
    db = DatabaseSessionManager(contended.url, engine_options={"pool_size": 2 * PAIRS})

    caplog.set_level(logging.WARNING, logger="fastapi_dbsession.retries")
    failures, hooks = _run_sync(db, dialect, retries=0)
    _check(contended, "sync", 0, failures, hooks, caplog)
    failures, hooks = _run_sync(db, dialect, retries=10)
    _check(contended, "sync", 10, failures, hooks, caplog)


# the codes the contention really produces: PostgreSQL SERIALIZABLE reads then updates (a
# serialization failure, or a deadlock when the two updates cross); MariaDB locks rows in
# opposite orders (a deadlock, 1213)
EXPECTED_CODES = {"postgresql": {"40001", "40P01"}, "mariadb": {1213}}


def _logged_code(record: logging.LogRecord) -> object:
    """The error number a retry log line names (MariaDB), else its SQLSTATE."""
    number = re.search(r"error (\d+)\)", record.getMessage())
    return int(number.group(1)) if number else record.sqlstate  # type: ignore[attr-defined]


def _check(  # noqa: PLR0917 - the figures of one run
    backend: Backend,
    side: str,
    retries: int,
    errors: list[BaseException],
    hooks: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = len(errors)
    retried = [
        r
        for r in caplog.records
        if r.name == "fastapi_dbsession.retries" and "retrying in" in r.getMessage()
    ]
    caplog.clear()
    attempts = hooks.count("attempt")
    committed = [hook for hook in hooks if hook != "attempt"]
    print(  # the figures for the record: pytest -s tests/test_retries.py
        f"{backend.name} {side} retries={retries}: transfers={2 * PAIRS} attempts={attempts} "
        f"failed={failures} committed={len(committed)} total={_total(backend)}"
    )
    assert _total(backend) == START * 2 * PAIRS  # the invariant holds exactly
    if retries == 0:
        assert failures >= 1  # the contention is real
        assert {_code(error) for error in errors} <= EXPECTED_CODES[backend.name]
        assert retried == []
        assert attempts == 2 * PAIRS  # nothing re-ran
        assert len(committed) == 2 * PAIRS - failures
    else:
        assert failures == 0
        assert retried  # the contention is real here too
        assert attempts == 2 * PAIRS + len(retried)  # one re-run per logged conflict, no more
        codes = {_logged_code(record) for record in retried}
        assert codes <= EXPECTED_CODES[backend.name]
        assert sorted(committed) == sorted(f"{s}->{t}" for s, t in _plan())  # each hook once


async def _run_async(
    db: DatabaseSessionManager, dialect: str, retries: int
) -> tuple[list[BaseException], list[str]]:
    hooks: list[str] = []
    isolation = "SERIALIZABLE" if dialect == "postgresql" else None
    attempted: set[str] = set()

    @db.transactional(retries=retries, isolation_level=isolation)
    async def transfer(
        session: AsyncSession, source: str, target: str, ready: asyncio.Barrier
    ) -> None:
        hooks.append("attempt")
        locking = dialect != "postgresql"
        query = select(Account).where(Account.owner == source)
        first = await session.scalar(query.with_for_update() if locking else query)
        if source + target not in attempted:
            attempted.add(source + target)
            await asyncio.wait_for(ready.wait(), 10)
        query = select(Account).where(Account.owner == target)
        second = await session.scalar(query.with_for_update() if locking else query)
        assert first is not None
        assert second is not None
        await session.execute(
            update(Account).where(Account.id == first.id).values(balance=Account.balance - 10)
        )
        await session.execute(
            update(Account).where(Account.id == second.id).values(balance=Account.balance + 10)
        )
        db.on_commit(lambda: hooks.append(f"{source}->{target}"))

    barriers = [asyncio.Barrier(2) for _ in range(PAIRS)]
    results = await asyncio.gather(
        *(
            transfer(source=source, target=target, ready=barriers[index // 2])
            for index, (source, target) in enumerate(_plan())
        ),
        return_exceptions=True,
    )
    await db.async_dispose()
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, DBAPIError)
    ]
    assert unexpected == []
    return [r for r in results if isinstance(r, DBAPIError)], hooks


def test_async_transfers_fail_without_retries_and_all_succeed_with_them(
    contended: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(contended)
    db = DatabaseSessionManager(
        async_url=contended.async_url, async_engine_options={"pool_size": 2 * PAIRS}
    )

    caplog.set_level(logging.WARNING, logger="fastapi_dbsession.retries")
    failures, hooks = asyncio.run(_run_async(db, contended.name, retries=0))
    _check(contended, "async", 0, failures, hooks, caplog)
    failures, hooks = asyncio.run(_run_async(db, contended.name, retries=10))
    _check(contended, "async", 10, failures, hooks, caplog)


# -- exact figures, one conflict at a time ----------------------------------------------------
# Each unit below meets a real server error, produced by a second connection, on the attempts
# the test chooses: the attempt count is exact, and so is the code that was (or was not)
# retried.


def _code(error: BaseException) -> object:
    """The error number (MariaDB) or the SQLSTATE (PostgreSQL) of a SQLAlchemy error."""
    orig = getattr(error, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _bump(backend: Backend, owner: str) -> None:
    """Another connection changes the row and commits."""
    engine = backend.admin_engine()
    with engine.begin() as connection:
        connection.execute(
            update(Account).where(Account.owner == owner).values(balance=Account.balance + 1)
        )
    engine.dispose()


def _seed_one(backend: Backend) -> None:
    engine = backend.admin_engine()
    with engine.begin() as connection:
        connection.execute(insert(Account), [{"owner": "a", "balance": START}])
    engine.dispose()


def _manager(backend: Backend, side: str) -> DatabaseSessionManager:
    if side == "sync":
        return DatabaseSessionManager(backend.url)
    return DatabaseSessionManager(async_url=backend.async_url)


def _call(db: DatabaseSessionManager, side: str, unit: Any) -> BaseException | None:
    """Run the unit on its side; return what it raised (None: it committed)."""
    try:
        if side == "sync":
            unit()
        else:

            async def run() -> None:
                try:
                    await unit()
                finally:
                    await db.async_dispose()

            asyncio.run(run())
    except Exception as error:
        return error
    finally:
        db.dispose()
    return None


@pytest.mark.postgresql
@pytest.mark.parametrize("side", ["sync", "async"])
@pytest.mark.parametrize(("conflicts", "attempts"), [(1, 2), (2, 3), (5, 3)])
def test_retries_n_reruns_a_serialization_failure_exactly_n_times(
    postgres_schema: Any, tmp_path: Any, side: str, conflicts: int, attempts: int
) -> None:
    """retries=2 on a unit whose first ``conflicts`` attempts meet a real 40001 (REPEATABLE
    READ: another connection commits a change to the row between our read and our update):
    1 conflict -> 2 attempts, committed; 2 -> 3, committed; more -> 3 attempts, then the
    40001 itself is raised."""
    backend = Backend(
        "postgresql", postgres_schema, postgres_schema.set(drivername="postgresql+asyncpg")
    )
    _seed_one(backend)
    db = _manager(backend, side)
    made: list[int] = []
    query = select(Account.balance).where(Account.owner == "a")
    change = update(Account).where(Account.owner == "a").values(balance=Account.balance - 10)

    if side == "sync":

        @db.transactional(retries=2, isolation_level="REPEATABLE READ")
        def unit(session: Session) -> None:
            made.append(1)
            session.scalar(query)  # the snapshot is taken here
            if len(made) <= conflicts:
                _bump(backend, "a")
            session.execute(change)

    else:

        @db.transactional(retries=2, isolation_level="REPEATABLE READ")
        async def unit(session: AsyncSession) -> None:  # type: ignore[misc]
            made.append(1)
            await session.scalar(query)
            if len(made) <= conflicts:
                _bump(backend, "a")
            await session.execute(change)

    try:
        error = _call(db, side, unit)
        assert len(made) == attempts
        bumps = min(conflicts, attempts)
        if conflicts < attempts:
            assert error is None
            assert _scalar(backend, "SELECT balance FROM accounts") == START + bumps - 10
        else:
            assert isinstance(error, DBAPIError)
            assert _code(error) == "40001"
            assert _scalar(backend, "SELECT balance FROM accounts") == START + bumps
    finally:
        _empty(backend)


def _empty(backend: Backend) -> None:
    engine = backend.admin_engine()
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM accounts"))
        connection.execute(text("DELETE FROM items"))
    engine.dispose()


@pytest.mark.mariadb
@pytest.mark.parametrize("side", ["sync", "async"])
@pytest.mark.parametrize(("lock_timeouts", "attempts"), [(False, 1), (True, 2)])
def test_a_real_lock_wait_timeout_is_retried_only_when_asked(
    mariadb_schema: Any, side: str, lock_timeouts: bool, attempts: int
) -> None:
    """Another connection holds the row's lock for the whole test: each attempt waits 1 s
    (innodb_lock_wait_timeout) and gets error 1205. retries=1 re-runs it once only with
    retry_on_lock_timeout=True; either way the 1205 is what the caller finally sees."""
    backend = Backend("mariadb", mariadb_schema, mariadb_schema.set(drivername="mysql+aiomysql"))
    _seed_one(backend)
    db = _manager(backend, side)
    made: list[int] = []
    change = update(Account).where(Account.owner == "a").values(balance=Account.balance - 10)
    short_wait = text("SET SESSION innodb_lock_wait_timeout = 1")

    if side == "sync":

        @db.transactional(retries=1, retry_on_lock_timeout=lock_timeouts)
        def unit(session: Session) -> None:
            made.append(1)
            session.execute(short_wait)
            session.execute(change)

    else:

        @db.transactional(retries=1, retry_on_lock_timeout=lock_timeouts)
        async def unit(session: AsyncSession) -> None:  # type: ignore[misc]
            made.append(1)
            await session.execute(short_wait)
            await session.execute(change)

    holder = backend.admin_engine()
    try:
        with holder.connect() as holding:
            holding.execute(select(Account).where(Account.owner == "a").with_for_update())
            error = _call(db, side, unit)
            holding.rollback()
        assert len(made) == attempts
        assert isinstance(error, DBAPIError)
        assert _code(error) == 1205
        assert _scalar(backend, "SELECT balance FROM accounts") == START
    finally:
        holder.dispose()
        _empty(backend)


@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_real_unique_violation_is_never_retried(contended: Backend, side: str) -> None:
    """retries=3 and a duplicate key (23505 / 1062): one attempt, the IntegrityError raised."""
    engine = contended.admin_engine()
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO items (name) VALUES ('taken')"))
    engine.dispose()
    db = _manager(contended, side)
    made: list[int] = []

    if side == "sync":

        @db.transactional(retries=3)
        def unit(session: Session) -> None:
            made.append(1)
            session.execute(text("INSERT INTO items (name) VALUES ('taken')"))

    else:

        @db.transactional(retries=3)
        async def unit(session: AsyncSession) -> None:  # type: ignore[misc]
            made.append(1)
            await session.execute(text("INSERT INTO items (name) VALUES ('taken')"))

    error = _call(db, side, unit)

    assert made == [1]
    assert isinstance(error, IntegrityError)
    assert _code(error) == ("23505" if contended.name == "postgresql" else 1062)
    assert contended.count() == 1


def _other_takes_b_then_waits_for_a(backend: Backend, holding_b: threading.Event) -> None:
    """A second transaction: locks row b, then waits for row a (which the unit holds)."""
    engine = backend.admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text("SET deadlock_timeout = '10s'"))  # the unit detects first
            connection.execute(
                update(Account).where(Account.owner == "b").values(balance=Account.balance + 1)
            )
            holding_b.set()
            connection.execute(
                update(Account).where(Account.owner == "a").values(balance=Account.balance + 1)
            )
            connection.commit()
    finally:
        engine.dispose()


def _wait_until_blocked(backend: Backend) -> None:
    """Until a backend of the test database waits for a lock (the other transaction, on a)."""
    for _ in range(500):
        if _scalar(
            backend,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ):
            return
        threading.Event().wait(0.01)
    raise AssertionError("the other transaction never waited for row a")


@pytest.mark.postgresql
@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_real_deadlock_is_retried_once_and_both_transactions_commit(
    postgres_schema: Any, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The unit locks a; another transaction locks b and waits for a; the unit then asks for b:
    PostgreSQL's deadlock detector aborts the unit (its deadlock_timeout is the shorter) with
    a real 40P01. retries=1 re-runs it once; both transactions' changes are committed."""
    backend = Backend(
        "postgresql", postgres_schema, postgres_schema.set(drivername="postgresql+asyncpg")
    )
    engine = backend.admin_engine()
    with engine.begin() as connection:
        connection.execute(
            insert(Account), [{"owner": "a", "balance": START}, {"owner": "b", "balance": START}]
        )
    engine.dispose()
    caplog.set_level(logging.WARNING, logger="fastapi_dbsession.retries")
    db = _manager(backend, side)
    made: list[int] = []
    others: list[threading.Thread] = []
    debit = update(Account).where(Account.owner == "a").values(balance=Account.balance - 10)
    credit = update(Account).where(Account.owner == "b").values(balance=Account.balance + 10)
    quick = text("SET LOCAL deadlock_timeout = '100ms'")

    def start_the_other() -> None:
        holding_b = threading.Event()
        other = threading.Thread(target=_other_takes_b_then_waits_for_a, args=(backend, holding_b))
        other.start()
        others.append(other)
        assert holding_b.wait(10)
        _wait_until_blocked(backend)

    if side == "sync":

        @db.transactional(retries=1)
        def unit(session: Session) -> None:
            made.append(1)
            session.execute(quick)
            session.execute(debit)
            if len(made) == 1:
                start_the_other()
            session.execute(credit)

    else:

        @db.transactional(retries=1)
        async def unit(session: AsyncSession) -> None:  # type: ignore[misc]
            made.append(1)
            await session.execute(quick)
            await session.execute(debit)
            if len(made) == 1:
                start_the_other()
            await session.execute(credit)

    try:
        error = _call(db, side, unit)
        for other in others:
            other.join(30)
        assert error is None
        assert made == [1, 1]
        [retried] = [r for r in caplog.records if r.name == "fastapi_dbsession.retries"]
        assert retried.sqlstate == "40P01"  # type: ignore[attr-defined]
        balances = dict(
            _rows(backend, "SELECT owner, balance FROM accounts")  # type: ignore[arg-type]
        )
        assert balances == {"a": START - 10 + 1, "b": START + 10 + 1}
    finally:
        _empty(backend)


def _rows(backend: Backend, sql: str) -> list[Any]:
    engine = backend.admin_engine()
    with engine.connect() as connection:
        rows = list(connection.execute(text(sql)).all())
    engine.dispose()
    return rows
