"""``command_timeout`` and ``connect_timeout``: a client-side deadline on every round trip.

Two real faults on both servers and all four drivers: the network stalls (a proxy stops
forwarding, connections stay open: the server "stops answering") and a statement that runs
longer than the deadline. Either way the unit gets ``CommandTimeoutError`` one deadline later,
the connection is invalidated, and the next unit works. The frozen-cluster version behind
uvicorn is tests/reliability/test_frozen_database.py.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any

import anyio
import pytest
from sqlalchemy import event, text

from fastapi_dbsession import (
    CommandTimeoutError,
    ConfigurationError,
    DatabaseSessionManager,
)
from tests.conftest import Backend
from tests.connect_arguments import driver_arguments
from tests.reliability.faults import CuttingProxy

DEADLINE = 1.0


def _sleep_sql(backend: Backend) -> str:
    return "SELECT pg_sleep(3)" if backend.name == "postgresql" else "SELECT SLEEP(3)"


async def _run(db: DatabaseSessionManager, side: str, sql: str) -> object:
    if side == "sync":

        def unit() -> object:
            with db.transaction() as session:
                return session.execute(text(sql)).scalar()

        return await anyio.to_thread.run_sync(unit)
    async with db.async_transaction() as session:
        return (await session.execute(text(sql))).scalar()


def _invalidations(db: DatabaseSessionManager, side: str) -> list[object]:
    engine = db.engine if side == "sync" else db.async_engine.sync_engine
    seen: list[object] = []
    event.listen(engine, "invalidate", lambda *args: seen.append(args[0]))
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("fault", ["stalled network", "slow statement"])
async def test_no_answer_raises_within_the_deadline(
    server_backend: Backend, proxy: CuttingProxy, *, side: str, fault: str, anyio_backend: str
) -> None:
    port = proxy.port
    db = DatabaseSessionManager(
        server_backend.url.set(port=port),
        async_url=server_backend.async_url.set(port=port),
        command_timeout=DEADLINE,
    )
    invalidated = _invalidations(db, side)
    try:
        assert await _run(db, side, "SELECT 1") == 1  # a pooled connection, used
        sql = _sleep_sql(server_backend) if fault == "slow statement" else "SELECT 2"
        if fault == "stalled network":
            proxy.stall()  # nothing gets through any more; every socket stays open
        started = time.monotonic()
        with pytest.raises(CommandTimeoutError, match="command_timeout=1 seconds"):
            await _run(db, side, sql)
        elapsed = time.monotonic() - started
        proxy.resume()
        assert DEADLINE - 0.1 < elapsed < DEADLINE + 1
        assert len(invalidated) == 1  # that connection is never lent again
        assert await _run(db, side, "SELECT 3") == 3
        engine = db.engine if side == "sync" else db.async_engine
        assert engine.pool.checkedout() == 0
    finally:
        proxy.resume()
        db.dispose()
        await db.async_dispose()


def _returned(elapsed: float, lent: int, sends_nothing: bool) -> None:
    if sends_nothing:  # no round trip: at once
        assert elapsed < DEADLINE / 2
    else:  # a round trip into the stalled network: cut at the deadline (the pool drops it)
        assert DEADLINE - 0.1 < elapsed < DEADLINE + 1
    assert lent == 0  # back in the pool either way


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_rollback_keeps_its_deadline_unless_it_sends_nothing(
    server_backend: Backend, proxy: CuttingProxy, *, side: str, anyio_backend: str
) -> None:
    """A ROLLBACK of an open transaction is cut at the deadline. The pool's rollback of a
    connection whose transaction was committed sends nothing on PostgreSQL (psycopg, asyncpg:
    no watchdog then), so it returns at once even with the network stalled and the connection
    is pooled again; PyMySQL and aiomysql send it anyway, and it keeps its deadline."""
    sends_nothing = server_backend.name == "postgresql"
    port = proxy.port
    db = DatabaseSessionManager(
        server_backend.url.set(port=port),
        async_url=server_backend.async_url.set(port=port),
        command_timeout=DEADLINE,
    )
    try:
        if side == "sync":
            engine = db.engine
            connection = engine.connect()
            connection.execute(text("SELECT 1"))
            connection.commit()
            proxy.stall()
            started = time.monotonic()
            connection.close()  # the pool's reset: a rollback with nothing to roll back
            _returned(time.monotonic() - started, engine.pool.checkedout(), sends_nothing)
            proxy.resume()
            connection = engine.connect()
            connection.execute(text("SELECT 1"))
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017,PT011  # the driver's or ours
                connection.rollback()
            assert DEADLINE - 0.1 < time.monotonic() - started < DEADLINE + 1
            connection.invalidate()
            connection.close()
        else:
            async_engine = db.async_engine
            async with async_engine.connect() as aconnection:
                await aconnection.execute(text("SELECT 1"))
                await aconnection.commit()
                proxy.stall()
                started = time.monotonic()
            _returned(time.monotonic() - started, async_engine.pool.checkedout(), sends_nothing)
            proxy.resume()
            aconnection = await async_engine.connect()
            await aconnection.execute(text("SELECT 1"))
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017,PT011  # the driver's or ours
                await aconnection.rollback()
            assert DEADLINE - 0.1 < time.monotonic() - started < DEADLINE + 1
            await aconnection.invalidate()
            await aconnection.close()
    finally:
        proxy.resume()
        db.dispose()
        await db.async_dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("engine_kind", ["replica", "bind"])
async def test_replica_and_bind_engines_get_the_deadline_too(
    server_backend: Backend, *, side: str, engine_kind: str, anyio_backend: str
) -> None:
    """A read-only unit on a replica, a bound model's statement on its bind: same deadline."""
    from tests.test_binds import Invoice  # a model whose __bind_key__ is "billing"

    url = server_backend.url if side == "sync" else server_backend.async_url
    other = {"replica_urls": [url]} if engine_kind == "replica" else {"binds": {"billing": url}}
    sides = {"url": url} if side == "sync" else {"async_url": url}
    db = DatabaseSessionManager(**sides, command_timeout=DEADLINE, **other)  # type: ignore[arg-type]
    statement = text(_sleep_sql(server_backend))
    bind_arguments = {"mapper": Invoice} if engine_kind == "bind" else None
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeoutError, match="command_timeout=1 seconds"):
            if side == "sync":

                def unit() -> None:
                    with db.transaction(read_only=engine_kind == "replica") as session:
                        session.execute(statement, bind_arguments=bind_arguments)

                await anyio.to_thread.run_sync(unit)
            else:
                async with db.async_transaction(read_only=engine_kind == "replica") as session:
                    await session.execute(statement, bind_arguments=bind_arguments)
        assert time.monotonic() - started < DEADLINE + 1
    finally:
        db.dispose()
        await db.async_dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.postgresql
async def test_asyncpg_gets_the_deadline_too(
    request: pytest.FixtureRequest, anyio_backend: str
) -> None:
    url = request.getfixturevalue("postgres_schema")
    db = DatabaseSessionManager(
        async_url=url.set(drivername="postgresql+asyncpg"), command_timeout=DEADLINE
    )
    invalidated = _invalidations(db, "async")
    try:
        started = time.monotonic()
        with pytest.raises(CommandTimeoutError):
            await _run(db, "async", "SELECT pg_sleep(3)")
        assert time.monotonic() - started < DEADLINE + 1
        assert len(invalidated) == 1
        assert await _run(db, "async", "SELECT 3") == 3
    finally:
        await db.async_dispose()


@pytest.mark.postgresql
def test_a_shorter_deadline_is_kept_while_a_longer_one_runs(
    request: pytest.FixtureRequest,
) -> None:
    """The watchdog sleeps until the earliest deadline it knows: a shorter one must wake it."""
    url = request.getfixturevalue("postgres_schema")
    patient = DatabaseSessionManager(url, command_timeout=30)
    hasty = DatabaseSessionManager(url, command_timeout=0.5)
    started = threading.Event()

    def long_statement() -> None:
        with patient.transaction() as session:
            started.set()
            session.execute(text("SELECT pg_sleep(2)"))

    worker = threading.Thread(target=long_statement)
    worker.start()
    try:
        started.wait(10)
        time.sleep(0.3)  # the long statement is on its way: its deadline is the known one
        with pytest.raises(CommandTimeoutError), hasty.transaction() as session:
            session.execute(text("SELECT pg_sleep(3)"))
    finally:
        worker.join()
        patient.dispose()
        hasty.dispose()


@pytest.mark.postgresql
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_keeps_the_deadline(request: pytest.FixtureRequest) -> None:
    """A worker forked after the engine was used (gunicorn --preload) has a watchdog too."""
    db = DatabaseSessionManager(request.getfixturevalue("postgres_schema"), command_timeout=0.5)
    with db.transaction() as session:
        session.execute(text("SELECT 1"))  # the parent's watchdog thread runs now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
        pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its statement was cut by the deadline
        code = 1
        try:
            db.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
            with db.transaction() as session:
                session.execute(text("SELECT pg_sleep(3)"))
        except CommandTimeoutError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    db.dispose()
    assert os.waitstatus_to_exitcode(status) == 0


def _driver_arguments(url: str, **options: Any) -> dict[str, Any]:
    """What the driver's ``connect()`` would get (SQLAlchemy's ``do_connect`` event shows it)."""
    is_async = url.split("://", maxsplit=1)[0] in ("postgresql+asyncpg", "mysql+aiomysql")
    return driver_arguments(
        DatabaseSessionManager(url, **options), side="async" if is_async else "sync"
    )


@pytest.mark.parametrize(
    ("url", "name", "value"),
    [
        ("postgresql+psycopg://u@h/d", "connect_timeout", 3),  # libpq: whole seconds, up
        ("postgresql+psycopg2://u@h/d", "connect_timeout", 3),
        ("postgresql+asyncpg://u@h/d", "timeout", 2.5),
        ("mysql+pymysql://u@h/d", "connect_timeout", 2.5),
        ("mysql+aiomysql://u@h/d", "connect_timeout", 2.5),
    ],
)
def test_connect_timeout_reaches_every_driver(url: str, name: str, value: float) -> None:
    assert _driver_arguments(url, connect_timeout=2.5)[name] == value


def test_the_urls_and_the_users_connect_timeout_win() -> None:
    own = _driver_arguments("postgresql+psycopg://u@h/d?connect_timeout=7", connect_timeout=2.5)
    assert own["connect_timeout"] == "7"
    given = _driver_arguments(
        "mysql+pymysql://u@h/d",
        connect_timeout=2.5,
        engine_options={"connect_args": {"connect_timeout": 9}},
    )
    assert given["connect_timeout"] == 9


@pytest.mark.parametrize("bad", [0, -1, "5", True])
@pytest.mark.parametrize("argument", ["command_timeout", "connect_timeout"])
def test_bad_timeouts_are_refused(argument: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"{argument}=.* positive number of seconds"):
        DatabaseSessionManager("sqlite://", **{argument: bad})  # type: ignore[arg-type]
