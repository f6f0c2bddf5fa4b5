"""An app with @app.on_event handlers and db.lifespan: FastAPI skips the handlers; we say so."""

from __future__ import annotations

import warnings

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbsession import DatabaseSessionManager, DBSessionWarning
from tests.conftest import Backend


def on_event(app: FastAPI, kind: str, ran: list[str]) -> None:
    with warnings.catch_warnings():  # FastAPI deprecates on_event itself
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event(kind)
        def create_db_and_tables() -> None:
            ran.append(kind)


@pytest.mark.parametrize("kind", ["startup", "shutdown"])
def test_on_event_handlers_under_our_lifespan_are_named_in_a_warning(
    backend: Backend, kind: str
) -> None:
    db = DatabaseSessionManager(backend.url)
    app = FastAPI(lifespan=db.lifespan)
    ran: list[str] = []
    on_event(app, kind, ran)

    expected = rf"{kind}: .*create_db_and_tables.*skipped"
    with pytest.warns(DBSessionWarning, match=expected), TestClient(app):
        pass
    assert ran == []  # FastAPI really did not run it: the warning is not a false alarm


def test_no_warning_without_on_event_handlers(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with TestClient(FastAPI(lifespan=db.lifespan)):
            pass


def test_handlers_on_an_app_without_our_lifespan_still_run_and_do_not_warn() -> None:
    app = FastAPI()
    ran: list[str] = []
    on_event(app, "startup", ran)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with TestClient(app):
            pass
    assert ran == ["startup"]
