"""retries=N under real contention: SERIALIZABLE transfers (PostgreSQL), deadlocks (MariaDB).

Each test runs the same transfers twice: without retries some fail with the database's own
serialization failure or deadlock error; with retries every one succeeds, the total balance
is exactly what it was, and the on_commit hook of each transfer ran once (never for a failed
attempt).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError
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


def _run_sync(db: DatabaseSessionManager, dialect: str, retries: int) -> tuple[int, list[str]]:
    hooks: list[str] = []
    transfer = _make_transfer(db, dialect, retries, hooks)
    barriers = {}
    for n in range(PAIRS):
        barriers[n] = threading.Barrier(2)
    failures = 0
    with ThreadPoolExecutor(max_workers=2 * PAIRS) as pool:
        futures = [
            pool.submit(transfer, source=source, target=target, barrier=barriers[index // 2])
            for index, (source, target) in enumerate(_plan())
        ]
        for future in futures:
            try:
                future.result(timeout=60)
            except DBAPIError:
                failures += 1
    db.dispose()
    return failures, hooks


def test_sync_transfers_fail_without_retries_and_all_succeed_with_them(
    contended: Backend,
) -> None:
    _seed(contended)
    dialect = contended.name
    db = DatabaseSessionManager(contended.url, engine_options={"pool_size": 2 * PAIRS})

    failures, hooks = _run_sync(db, dialect, retries=0)
    _check(contended, "sync", 0, failures, hooks)
    failures, hooks = _run_sync(db, dialect, retries=10)
    _check(contended, "sync", 10, failures, hooks)


def _check(backend: Backend, side: str, retries: int, failures: int, hooks: list[str]) -> None:
    attempts = hooks.count("attempt")
    committed = [hook for hook in hooks if hook != "attempt"]
    print(  # the figures for the record: pytest -s tests/test_retries.py
        f"{backend.name} {side} retries={retries}: transfers={2 * PAIRS} attempts={attempts} "
        f"failed={failures} committed={len(committed)} total={_total(backend)}"
    )
    assert _total(backend) == START * 2 * PAIRS  # the invariant holds exactly
    if retries == 0:
        assert failures >= 1  # the contention is real
        assert len(committed) == 2 * PAIRS - failures
    else:
        assert failures == 0
        assert attempts > 2 * PAIRS  # some transfers really were re-run
        assert sorted(committed) == sorted(f"{s}->{t}" for s, t in _plan())  # each hook once


async def _run_async(
    db: DatabaseSessionManager, dialect: str, retries: int
) -> tuple[int, list[str]]:
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
    return sum(isinstance(r, DBAPIError) for r in results), hooks


def test_async_transfers_fail_without_retries_and_all_succeed_with_them(
    contended: Backend,
) -> None:
    _seed(contended)
    db = DatabaseSessionManager(
        async_url=contended.async_url, async_engine_options={"pool_size": 2 * PAIRS}
    )

    failures, hooks = asyncio.run(_run_async(db, contended.name, retries=0))
    _check(contended, "async", 0, failures, hooks)
    failures, hooks = asyncio.run(_run_async(db, contended.name, retries=10))
    _check(contended, "async", 10, failures, hooks)
