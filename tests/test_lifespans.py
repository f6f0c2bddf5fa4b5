"""compose_lifespans: several managers (and the app's own lifespan) in one line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager, DatabaseUnavailableError, compose_lifespans
from tests._servers import free_port
from tests.conftest import Backend


def _disposed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("disposed")]


def test_two_managers_and_the_apps_own_lifespan_in_one_line(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbsession")
    users = DatabaseSessionManager(backend.url)
    orders = DatabaseSessionManager(f"sqlite:///{tmp_path / 'orders.db'}")
    order: list[str] = []

    @asynccontextmanager
    async def own(app: Any) -> AsyncIterator[dict[str, str]]:
        order.append("own up")
        yield {"greeting": "hello"}
        order.append("own down")

    app = FastAPI(lifespan=compose_lifespans(users.lifespan, orders.lifespan, own))

    @app.get("/both")
    def both(
        request: Request,
        user_session: Session = Depends(users.session),
        order_session: Session = Depends(orders.session),
    ) -> list[object]:
        return [
            user_session.execute(text("SELECT 1")).scalar_one(),
            order_session.execute(text("SELECT 2")).scalar_one(),
            request.state.greeting,
        ]

    with TestClient(app) as client:
        assert order == ["own up"]
        assert users.pool_status()["sync"].checked_out == 0  # both checked at startup...
        assert orders.pool_status()["sync"].checked_out == 0
        assert client.get("/both").json() == [1, 2, "hello"]
        assert _disposed(caplog) == []
    assert order == ["own up", "own down"]
    disposed = _disposed(caplog)  # ...and both disposed at shutdown, in reverse order
    assert len(disposed) == 2
    assert "orders.db" in disposed[0]


def test_a_failed_startup_shuts_down_the_ones_already_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbsession")
    first = DatabaseSessionManager(f"sqlite:///{tmp_path / 'first.db'}")
    down = DatabaseSessionManager(
        f"postgresql+psycopg://app@127.0.0.1:{free_port()}/app", startup_retries=0
    )
    app = FastAPI(lifespan=compose_lifespans(first.lifespan, down.lifespan))
    with pytest.raises(DatabaseUnavailableError), TestClient(app):
        pass
    disposed = _disposed(caplog)
    assert len(disposed) == 1
    assert "first.db" in disposed[0]
