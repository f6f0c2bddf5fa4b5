"""Two ways to test a SQLModel app: the plugin's rollback isolation, or an engine per test."""

from collections.abc import Iterator

import pytest
import sqlmodel
from fastapi.testclient import TestClient
from sqlmodel import SQLModel, create_engine
from sqlmodel.pool import StaticPool

from app import app, db, get_session
from fastapi_dbsession import DatabaseSessionManager
from fastapi_dbsession.testing import use_engine


# --8<-- [start:plugin]
@pytest.fixture
def client(db_isolation: DatabaseSessionManager) -> Iterator[TestClient]:
    """Requests run inside the test's outer transaction, rolled back at its end."""
    with TestClient(app) as client:
        yield client


# --8<-- [end:plugin]


# --8<-- [start:engine]
@pytest.fixture
def memory_client() -> Iterator[TestClient]:
    """SQLModel's tutorial style: a fresh in-memory database per test, used by the app."""
    engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    SQLModel.metadata.create_all(engine)
    with use_engine(db, engine), TestClient(app) as client:
        yield client


# --8<-- [end:engine]


# --8<-- [start:overrides]
@pytest.fixture
def session() -> Iterator[sqlmodel.Session]:
    engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    SQLModel.metadata.create_all(engine)
    with sqlmodel.Session(engine) as session:
        yield session


@pytest.fixture
def override_client(session: sqlmodel.Session) -> Iterator[TestClient]:
    """The tutorial's dependency_overrides, unchanged: get_session is db.session."""
    app.dependency_overrides[get_session] = lambda: session
    with TestClient(app) as client:
        yield client
    app.dependency_overrides.clear()


# --8<-- [end:overrides]
