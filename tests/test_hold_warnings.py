"""Hold-time warnings: a request or unit holding a connection too long is named, with its origin.

The request case is the one the issue names: ``Depends(db.session)`` in an auth dependency
that runs a query, then a slow "external call" in the endpoint while the transaction (and its
connection) stays open. Units of work outside requests are named by the line that opened them;
a session garbage-collected while open is reported with where it was made.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager
from fastapi_dbsession.testing._seam import database_of
from tests._source import line_of
from tests.conftest import Backend

HOLDS = "fastapi_dbsession.holds"
EXTERNAL_CALL = 0.3
THRESHOLD = 0.2


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == HOLDS]


def _line_of(marker: str) -> int:
    return line_of(__file__, marker)


def _app(db: DatabaseSessionManager) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)

    def get_current_user(session: Session = Depends(db.session)) -> int:  # SYNC-AUTH
        return int(session.scalar(text("SELECT 1")))

    async def get_current_async_user(  # ASYNC-AUTH
        session: AsyncSession = Depends(db.async_session),
    ) -> int:
        return int(await session.scalar(text("SELECT 1")))

    @app.get("/sync/orders")
    def sync_orders(user: int = Depends(get_current_user), slow: bool = True) -> int:
        if slow:
            time.sleep(EXTERNAL_CALL)  # the call to another service
        return user

    @app.get("/async/orders")
    async def async_orders(user: int = Depends(get_current_async_user), slow: bool = True) -> int:
        if slow:
            await asyncio.sleep(EXTERNAL_CALL)
        return user

    @app.get("/sync/untouched")
    def untouched(session: Session = Depends(db.session)) -> str:
        time.sleep(EXTERNAL_CALL)  # never used its session: no connection was held
        return "ok"

    return app


def _manager(backend: Backend) -> DatabaseSessionManager:
    return DatabaseSessionManager(
        backend.url, async_url=backend.async_url, hold_warning_threshold=THRESHOLD
    )


def test_request_holding_its_connection_is_logged_with_route_and_dependency(
    backend: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOLDS)
    db = _manager(backend)
    with TestClient(_app(db)) as client:
        assert client.get(f"/{side}/orders").status_code == 200
        assert client.get(f"/{side}/orders", params={"slow": False}).status_code == 200
        if side == "sync":
            assert client.get("/sync/untouched").status_code == 200

    [record] = _records(caplog)  # the fast request and the untouched session: nothing
    assert record.levelno == logging.WARNING
    assert record.held_seconds >= EXTERNAL_CALL  # type: ignore[attr-defined]
    assert record.request == f"GET /{side}/orders"  # type: ignore[attr-defined]
    message = record.getMessage()
    assert message.startswith(f"GET /{side}/orders held a database connection")
    assert f"(hold_warning_threshold {THRESHOLD:g} s)" in message
    dependency = "get_current_user" if side == "sync" else "get_current_async_user"
    marker = "SYNC-AUTH" if side == "sync" else "ASYNC-AUTH"
    assert (
        f"Depends(db.session) in _app.<locals>.{dependency} ({__file__}:{_line_of(marker)})"
        in message
    )


def test_unit_of_work_holding_its_connection_is_logged_with_the_line_that_opened_it(
    backend: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOLDS)
    db = _manager(backend)

    def sync_job() -> None:
        with db.transaction() as session:  # SYNC-JOB
            session.execute(text("SELECT 1"))
            time.sleep(EXTERNAL_CALL)

    async def async_job() -> None:
        async with db.async_transaction() as session:  # ASYNC-JOB
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(EXTERNAL_CALL)
        await db.async_dispose()

    if side == "sync":
        sync_job()
        db.dispose()
    else:
        asyncio.run(async_job())

    [record] = _records(caplog)
    marker, function = ("SYNC-JOB", "sync_job") if side == "sync" else ("ASYNC-JOB", "async_job")
    assert record.made_at == f"{__file__}:{_line_of(marker)} in {function}"  # type: ignore[attr-defined]
    assert record.getMessage().startswith("a unit of work held a database connection")
    assert f"the session was made at {record.made_at}" in record.getMessage()  # type: ignore[attr-defined]


def test_session_collected_while_open_is_reported_with_where_it_was_made(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOLDS)
    db = _manager(backend)

    def leak() -> None:
        session = database_of(db).new_session()  # LEAK
        session.execute(text("SELECT 1"))  # its transaction now holds a connection

    def tidy() -> None:
        session = database_of(db).new_session()
        session.execute(text("SELECT 1"))
        session.close()

    tidy()
    leak()
    gc.collect()
    db.dispose()

    [record] = _records(caplog)  # the closed one is not reported
    message = record.getMessage()
    assert "was garbage-collected with its transaction still open" in message
    assert f"made at {__file__}:{_line_of('LEAK')} in leak" in message


def test_hold_warnings_off_installs_nothing(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOLDS)
    db = DatabaseSessionManager(backend.url)
    with db.transaction() as session:
        session.execute(text("SELECT 1"))
        time.sleep(EXTERNAL_CALL)
        assert "fastapi_dbsession.hold" not in session.info
    db.dispose()
    assert _records(caplog) == []


@pytest.mark.parametrize("value", [-1, "5", True])
def test_bad_hold_threshold_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="hold_warning_threshold=.* must be a number"):
        DatabaseSessionManager("sqlite://", hold_warning_threshold=value)
