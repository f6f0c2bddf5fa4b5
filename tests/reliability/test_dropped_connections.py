"""A database that ends every connection as soon as it is made: 503 and Retry-After, not 500.

SQLAlchemy's pool gives a checkout two attempts: it replaces a connection found dead with a
new one, and when that one is dead too it raises ``InvalidRequestError("This connection is
closed")``, which FastAPI answers with an ordinary 500. In the long audit (backends killed
every 200 ms) a MariaDB request met exactly that. Here it is made certain: from the moment the
test arms it, every backend of the test's own database is ended, and every new connection is
ended as soon as it is open (a pool ``connect`` listener ends it, waits until the server no
longer lists it, then, for asyncpg and aiomysql, until the event loop has told the driver;
so the checkout's own check finds it dead).
Both checkout attempts then meet a dead connection: the client must get 503 with
``Retry-After``, the row must be absent, nothing may stay checked out, and once the database
stops dropping connections the next request is answered 201.

Real uvicorn, PostgreSQL and MariaDB, sync and async endpoints.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Connection, create_engine, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fastapi_dbsession import DatabaseSessionManager, DatabaseUnavailableError
from tests.conftest import Backend
from tests.reliability import audit, figures
from tests.reliability.servers import uvicorn_server

pytestmark = pytest.mark.parametrize("side", ["sync", "async"])


class Dropper:
    """While armed, end every backend of the database, new connections included."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection  # autocommit, outside the app's pools
        self.armed = False
        self.ended = 0
        self._lock = threading.Lock()

    def end_all(self) -> None:
        with self._lock:
            self.ended += audit.end_backends(self.connection)
            deadline = time.monotonic() + 10
            while audit.backends(self.connection):  # gone: the server closed their sockets
                assert time.monotonic() < deadline, "the server did not end its backends"
                time.sleep(0.01)

    def on_connect(self, dbapi_connection: object, *_: object) -> None:
        if not self.armed:
            return
        self.end_all()
        # The client must know it too before the checkout looks. A sync driver's socket holds
        # the server's close already; asyncpg and aiomysql learn it when the event loop reads
        # their socket, so let the loop run (this listener blocks it) until the driver says so.
        run_async = getattr(dbapi_connection, "run_async", None)  # SQLAlchemy's async adapter
        if run_async is None:
            return
        driver: Any = getattr(dbapi_connection, "driver_connection", None)
        deadline = time.monotonic() + 10
        while not _driver_saw_the_end(driver):
            assert time.monotonic() < deadline, "the client never saw its connection end"
            run_async(lambda _: asyncio.sleep(0.01))


def _driver_saw_the_end(driver: Any) -> bool:
    if hasattr(driver, "is_closed"):  # asyncpg: connection_lost closed it
        return bool(driver.is_closed())
    reader = getattr(driver, "_reader", None)  # aiomysql's stream: no public accessor
    return reader is None or bool(reader.at_eof())


@pytest.fixture
def dropper(server_backend: Backend) -> Iterator[Dropper]:
    engine = create_engine(server_backend.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        yield Dropper(connection)
    engine.dispose()


def _app(db: DatabaseSessionManager) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    insert = audit.AUDIT.insert()

    @app.post("/sync/{key}", status_code=201)
    def sync_write(key: str, session: Session = Depends(db.session)) -> str:
        session.execute(insert.values(k=key))
        return key

    @app.post("/async/{key}", status_code=201)
    async def async_write(key: str, session: AsyncSession = Depends(db.async_session)) -> str:
        await session.execute(insert.values(k=key))
        return key

    return app


def test_a_database_dropping_every_connection_answers_503_with_retry_after(
    audited: Backend, dropper: Dropper, side: str
) -> None:
    db = DatabaseSessionManager(
        audited.url,
        async_url=audited.async_url,
        engine_options={"pool_size": 2, "max_overflow": 0},
    )
    engine = db.engine if side == "sync" else db.async_engine.sync_engine
    event.listen(engine, "connect", dropper.on_connect)
    try:
        with uvicorn_server(_app(db)) as base_url:
            before = httpx.post(f"{base_url}/{side}/before", timeout=30)  # a pooled connection
            dropper.armed = True
            dropper.end_all()  # the pooled connection is dead now; so is every new one
            dropped = httpx.post(f"{base_url}/{side}/dropped", timeout=30)
            dropper.armed = False
            after = httpx.post(f"{base_url}/{side}/after", timeout=30)
            checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    finally:
        db.dispose()
    rows = audit.rows_by_key(audited.url)
    figures.record(
        f"dropped connections[{audited.name}-{side}]",
        {
            "status": dropped.status_code,
            "retry_after": dropped.headers.get("retry-after"),
            "backends_ended": dropper.ended,
            "checked_out": checked_out,
        },
    )
    assert before.status_code == 201
    assert dropped.status_code == 503, dropped.text
    assert dropped.headers["retry-after"].isdigit()
    assert dropper.ended >= 3  # the pooled connection, then both of the checkout's new ones
    assert rows["dropped"] == 0
    assert after.status_code == 201  # the pool heals once the database stops dropping
    assert rows["before"] == rows["after"] == 1
    assert checked_out == 0


def test_outside_a_request_the_error_says_the_database_drops_connections(
    audited: Backend, dropper: Dropper, side: str
) -> None:
    """``db.transaction()`` / ``db.async_transaction()`` get ``DatabaseUnavailableError``."""
    db = DatabaseSessionManager(audited.url, async_url=audited.async_url)
    engine = db.engine if side == "sync" else db.async_engine.sync_engine
    event.listen(engine, "connect", dropper.on_connect)
    dropper.armed = True
    query = select(audit.AUDIT.c.k)

    async def use_async() -> None:
        async with db.async_transaction() as session:
            await session.execute(query)

    try:
        with pytest.raises(DatabaseUnavailableError, match="is dropping connections"):
            if side == "sync":
                with db.transaction() as session:
                    session.execute(query)
            else:
                asyncio.run(use_async())
    finally:
        dropper.armed = False
        db.dispose()
    assert dropper.ended >= 2  # both of the checkout's connections
