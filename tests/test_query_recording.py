"""Query recording (opt-in): per-request figures in a log line and ``Server-Timing``; slow queries.

Each test builds an app on a real database, sends real requests, and reads what a user reads:
the log records and the response headers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager, ServerTimingMiddleware
from tests._source import line_of
from tests.conftest import Backend

QUERIES = "fastapi_dbsession.queries"
SLOW = "fastapi_dbsession.slow_queries"
SECRET = "s3cr3t-parameter-sentinel"


def _app(db: DatabaseSessionManager, *, middleware: bool = True) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    if middleware:
        app.add_middleware(ServerTimingMiddleware)

    @app.get("/sync/{item_id}")
    def sync_route(item_id: int, session: Session = Depends(db.session)) -> int:
        for _ in range(3):
            session.execute(text("SELECT 1"))
        return item_id

    @app.get("/async/{item_id}")
    async def async_route(item_id: int, session: AsyncSession = Depends(db.async_session)) -> int:
        for _ in range(3):
            await session.execute(text("SELECT 1"))
        return item_id

    @app.get("/none")
    def no_database() -> str:
        return "ok"

    return app


def _records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == name]


def _manager(backend: Backend, **options: Any) -> DatabaseSessionManager:
    return DatabaseSessionManager(backend.url, async_url=backend.async_url, **options)


def test_each_request_logs_its_statement_count_and_time(
    backend: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=QUERIES)
    db = _manager(backend, record_queries=True, name="orders")
    with TestClient(_app(db)) as client:
        response = client.get(f"/{side}/7")
        untouched = client.get("/none")

    assert response.status_code == 200
    [record] = _records(caplog, QUERIES)
    expected = 3 + (1 if backend.name == "sqlite" else 0)  # SQLite: our explicit BEGIN too
    assert record.statements == expected  # type: ignore[attr-defined]
    assert record.request == f"GET /{side}/{{item_id}}"  # type: ignore[attr-defined]  # the route
    assert record.database == "orders"  # type: ignore[attr-defined]
    assert re.fullmatch(
        rf"GET /{side}/{{item_id}}: {expected} SQL statements in \d+\.\d ms \(database orders\)",
        record.getMessage(),
    )
    header = response.headers["server-timing"]
    match = re.fullmatch(r'db;dur=(\d+\.\d);desc="orders: (\d+) queries"', header)
    assert match is not None, header
    assert int(match.group(2)) == expected
    assert float(match.group(1)) == pytest.approx(record.sql_seconds * 1000, abs=0.06)  # type: ignore[attr-defined]
    assert "server-timing" not in untouched.headers  # no session, no entry


def test_recording_off_installs_no_listener_and_adds_nothing(
    backend: Backend, side: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbsession")
    db = _manager(backend)
    with TestClient(_app(db)) as client:
        response = client.get(f"/{side}/7")
        engine = db.engine if side == "sync" else db.async_engine.sync_engine

    assert response.status_code == 200
    assert "server-timing" not in response.headers
    assert _records(caplog, QUERIES) == []
    assert len(engine.dispatch.before_cursor_execute) == 0  # zero cost per statement
    assert len(engine.dispatch.after_cursor_execute) == 0


def test_server_timing_needs_the_middleware(backend: Backend) -> None:
    db = _manager(backend, record_queries=True)
    with TestClient(_app(db, middleware=False)) as client:
        response = client.get("/sync/1")
    assert response.status_code == 200
    assert "server-timing" not in response.headers


SLEEP = {
    "postgresql": "SELECT pg_sleep(:seconds), :secret",
    "mariadb": "SELECT SLEEP(:seconds), :secret",
}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    from tests.conftest import _make_backend

    yield from _make_backend(request.param, request, tmp_path)


def _slow_app(db: DatabaseSessionManager, backend: Backend) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    sleep = text(SLEEP[backend.name])

    @app.get("/sync/report")
    def sync_report(session: Session = Depends(db.session)) -> str:
        session.execute(sleep, {"seconds": 0.3, "secret": SECRET})  # SLOW-SYNC
        session.execute(text("SELECT 1"))
        return "ok"

    @app.get("/async/report")
    async def async_report(session: AsyncSession = Depends(db.async_session)) -> str:
        await session.execute(sleep, {"seconds": 0.3, "secret": SECRET})  # SLOW-ASYNC
        await session.execute(text("SELECT 1"))
        return "ok"

    return app


def _line_of(marker: str) -> int:
    return line_of(__file__, marker)


@pytest.mark.parametrize("show_parameters", [False, True])
def test_slow_statements_are_logged_with_the_line_that_ran_them(
    server: Backend, side: str, show_parameters: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SLOW)
    db = _manager(server, slow_query_threshold=0.2, log_query_parameters=show_parameters)
    with TestClient(_slow_app(db, server)) as client:
        response = client.get(f"/{side}/report")

    assert response.status_code == 200
    [record] = _records(caplog, SLOW)  # the fast SELECT 1 is not logged
    assert record.levelno == logging.WARNING
    assert record.sql_seconds >= 0.3  # type: ignore[attr-defined]
    marker = "SLOW-SYNC" if side == "sync" else "SLOW-ASYNC"
    function = "sync_report" if side == "sync" else "async_report"
    assert record.location == f"{__file__}:{_line_of(marker)} in {function}"  # type: ignore[attr-defined]
    message = record.getMessage()
    assert "(threshold 0.2 s)" in message
    assert f"during GET /{side}/report" in message
    assert "SLEEP(" in message.upper()
    assert (SECRET in message) is show_parameters  # hidden unless asked
    if not show_parameters:
        assert "parameters: hidden (log_query_parameters=True shows them)" in message


def test_slow_statements_outside_requests_name_the_caller(
    server: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SLOW)
    db = _manager(server, slow_query_threshold=0.2)

    def nightly_job() -> None:
        with db.transaction() as session:
            session.execute(text(SLEEP[server.name]), {"seconds": 0.25, "secret": 1})  # JOB

    nightly_job()
    db.dispose()
    [record] = _records(caplog, SLOW)
    assert record.location == f"{__file__}:{_line_of('JOB')} in nightly_job"  # type: ignore[attr-defined]
    assert " during " not in record.getMessage()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"record_queries": "yes"}, "record_queries='yes' must be True or False"),
        ({"slow_query_threshold": -1}, "slow_query_threshold=-1 must be a number of seconds"),
        ({"slow_query_threshold": "1"}, "slow_query_threshold='1' must be a number"),
        ({"name": ""}, "name='' must be a non-empty string"),
    ],
)
def test_bad_recording_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        DatabaseSessionManager("sqlite://", **options)


def test_name_defaults_to_the_database_name(tmp_path: Any) -> None:
    assert _name_of(f"sqlite:///{tmp_path}/shop.db") == "shop"
    assert _name_of("postgresql+psycopg://app:pw@db/orders") == "orders"
    assert _name_of("sqlite://") == "default"


def _name_of(url: str) -> str:
    caplog_db = DatabaseSessionManager(url, record_queries=True)
    return caplog_db.name
