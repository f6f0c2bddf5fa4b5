"""Retries are visible: each one logged (attempt, SQLSTATE, delay), bounded, and switchable off.

Conflicts are real: two concurrent SERIALIZABLE transactions updating one row (PostgreSQL),
two transactions locking two rows in opposite order (MariaDB deadlock). The deadline and
exhaustion tests need a unit that fails on every attempt: the server itself raises the error
(PL/pgSQL ``RAISE ... USING ERRCODE``, MariaDB ``SIGNAL``), with its real SQLSTATE.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager, transactional
from fastapi_dbsession.testing import retries_disabled
from tests.conftest import Backend, _make_backend
from tests.models import Account

RETRY_LOGGER = "fastapi_dbsession.retries"
FAIL_EVERY_TIME = {
    "postgresql": "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
    "mariadb": "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'conflict'",
}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend(request.param, request, tmp_path)


def _seed(backend: Backend) -> None:
    engine = backend.admin_engine()
    with engine.begin() as connection:
        connection.execute(
            insert(Account), [{"owner": "a", "balance": 100}, {"owner": "b", "balance": 100}]
        )
    engine.dispose()


def _balances(backend: Backend) -> dict[str, int]:
    engine = backend.admin_engine()
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT owner, balance FROM accounts")).all()
    engine.dispose()
    return {str(row[0]): int(row[1]) for row in rows}


def _manager(backend: Backend, side: str) -> DatabaseSessionManager:
    if side == "sync":
        return DatabaseSessionManager(backend.url, engine_options={"pool_size": 2})
    return DatabaseSessionManager(async_url=backend.async_url)


def _order(backend: Backend, first: str) -> tuple[str, str]:
    """PostgreSQL: both update row "a" (serialization failure); MariaDB: opposite lock order."""
    if backend.name == "postgresql":
        return ("a", "a")
    return (first, "b" if first == "a" else "a")


def _read(backend: Backend, owner: str) -> Any:
    """PostgreSQL: a plain read (the snapshot); MariaDB: lock the row."""
    query = select(Account).where(Account.owner == owner)
    return query if backend.name == "postgresql" else query.with_for_update()


def _run_conflict(
    db: DatabaseSessionManager, backend: Backend, side: str, retries: int
) -> list[Any]:
    """Two units that conflict on their first attempt; returns each one's result or error."""
    isolation = "SERIALIZABLE" if backend.name == "postgresql" else None
    if side == "sync":
        barrier = threading.Barrier(2)
        first_attempt: set[str] = set()

        @db.transactional(retries=retries, isolation_level=isolation)
        def sync_unit(session: Session, name: str) -> None:
            one, two = _order(backend, name)
            session.scalar(_read(backend, one))
            if name not in first_attempt:
                first_attempt.add(name)
                barrier.wait(timeout=10)
            session.execute(
                update(Account).where(Account.owner == two).values(balance=Account.balance + 1)
            )

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(sync_unit, name=name) for name in ("a", "b")]
            results = [future.exception(timeout=60) for future in futures]
        db.dispose()
        return results

    async def run() -> list[Any]:
        ready = asyncio.Barrier(2)
        first_attempt: set[str] = set()

        @db.transactional(retries=retries, isolation_level=isolation)
        async def async_unit(session: AsyncSession, name: str) -> None:
            one, two = _order(backend, name)
            await session.scalar(_read(backend, one))
            if name not in first_attempt:
                first_attempt.add(name)
                await asyncio.wait_for(ready.wait(), 10)
            await session.execute(
                update(Account).where(Account.owner == two).values(balance=Account.balance + 1)
            )

        results = await asyncio.gather(
            async_unit(name="a"), async_unit(name="b"), return_exceptions=True
        )
        await db.async_dispose()
        return list(results)

    return asyncio.run(run())


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == RETRY_LOGGER]


def _expected_state(backend: Backend) -> str:
    return "40001"  # PostgreSQL serialization_failure; MariaDB reports its deadlock as 40001


@pytest.mark.parametrize("side", ["sync", "async"])
def test_each_retry_is_logged_with_attempt_sqlstate_and_delay(
    server: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(server)
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)

    results = _run_conflict(_manager(server, side), server, side, retries=3)

    assert results == [None, None]  # both units committed in the end
    assert sum(_balances(server).values()) == 202  # each update applied exactly once
    records = _records(caplog)
    assert len(records) == 1, [record.getMessage() for record in records]
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.attempt == 1  # type: ignore[attr-defined]
    assert record.sqlstate == _expected_state(server)  # type: ignore[attr-defined]
    assert 0.01 <= record.retry_delay <= 0.02  # type: ignore[attr-defined]  # first backoff
    message = record.getMessage()
    assert "sync_unit" in message or "async_unit" in message
    kind = "serialization failure" if server.name == "postgresql" else "deadlock"
    assert f"attempt 1 of 4 failed with {kind} (SQLSTATE 40001" in message
    assert "retrying in 0.0" in message
    if server.name == "mariadb":
        assert "error 1213" in message


@pytest.mark.parametrize("switch", ["retries_disabled()", "db_no_retries fixture"])
@pytest.mark.parametrize("side", ["sync", "async"])
def test_retries_switched_off_raise_the_first_conflict(
    server: Backend,
    side: str,
    switch: str,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    _seed(server)
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)

    if switch == "db_no_retries fixture":
        request.getfixturevalue("db_no_retries")
        results = _run_conflict(_manager(server, side), server, side, retries=3)
    else:
        with retries_disabled():
            results = _run_conflict(_manager(server, side), server, side, retries=3)

    failures = [result for result in results if result is not None]
    assert len(failures) == 1
    assert isinstance(failures[0], DBAPIError)
    assert sum(_balances(server).values()) == 201  # the failed unit was rolled back, not re-run
    [record] = _records(caplog)
    assert "not retried: retries are switched off" in record.getMessage()


def _always_failing(
    db: DatabaseSessionManager, backend: Backend, side: str, **options: Any
) -> tuple[list[int], Any]:
    attempts: list[int] = []
    sql = text(FAIL_EVERY_TIME[backend.name])
    if side == "sync":

        @db.transactional(**options)
        def sync_unit(session: Session) -> None:
            attempts.append(1)
            session.execute(sql)

        return attempts, sync_unit

    @db.transactional(**options)
    async def async_unit(session: AsyncSession) -> None:
        attempts.append(1)
        await session.execute(sql)

    async def run() -> None:
        try:
            await async_unit()
        finally:
            await db.async_dispose()

    return attempts, lambda: asyncio.run(run())


@pytest.mark.parametrize("side", ["sync", "async"])
def test_backoff_grows_exponentially_with_jitter_until_retries_are_exhausted(
    server: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    db = _manager(server, side)
    attempts, unit = _always_failing(db, server, side, retries=4)

    with pytest.raises(DBAPIError):
        unit()

    assert len(attempts) == 5
    records = _records(caplog)
    assert [record.attempt for record in records] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    delays = [record.retry_delay for record in records[:-1]]  # type: ignore[attr-defined]
    for number, delay in enumerate(delays, start=1):
        ceiling = 0.02 * 2 ** (number - 1)
        assert ceiling / 2 <= delay <= ceiling  # exponential, jittered in its upper half
    assert "not retried: retries=4 exhausted" in records[-1].getMessage()
    assert records[-1].retry_delay is None  # type: ignore[attr-defined]
    db.dispose()


@pytest.mark.parametrize("side", ["sync", "async"])
def test_retry_deadline_stops_retrying_in_time(
    server: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    db = _manager(server, side)
    attempts, unit = _always_failing(db, server, side, retries=100, retry_deadline=0.25)

    started = time.monotonic()
    with pytest.raises(DBAPIError):
        unit()
    elapsed = time.monotonic() - started

    assert elapsed < 0.25 + 0.5  # no retry began past the deadline (plus round trips)
    assert 3 <= len(attempts) < 10  # 10+20+40+80 ms of backoff fit; 100 retries do not
    assert "not retried: retry_deadline=0.25s reached" in _records(caplog)[-1].getMessage()
    db.dispose()


def test_retry_deadline_needs_retries() -> None:
    with pytest.raises(ConfigurationError, match="retry_deadline=1.0 bounds .* retries is 0"):
        transactional(retry_deadline=1.0)
    with pytest.raises(ConfigurationError, match="retry_deadline=0 must be a number"):
        transactional(retries=2, retry_deadline=0)
