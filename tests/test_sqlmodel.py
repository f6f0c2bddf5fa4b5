"""session_class=sqlmodel.Session / async_session_class=sqlmodel AsyncSession, everywhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlmodel
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from fastapi_dbsession import DatabaseSessionManager
from tests.conftest import Backend
from tests.models import Hero


@pytest.fixture
def db(backend: Backend) -> DatabaseSessionManager:
    return DatabaseSessionManager(
        backend.url,
        async_url=backend.async_url,
        session_class=sqlmodel.Session,
        async_session_class=SQLModelAsyncSession,
    )


@pytest.fixture
def client(db: DatabaseSessionManager) -> Iterator[TestClient]:
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/sync/heroes", status_code=201)
    def create(name: str, session: sqlmodel.Session = Depends(db.session)) -> Hero:
        assert isinstance(session, sqlmodel.Session)
        hero = Hero(name=name)
        session.add(hero)
        session.flush()
        return hero

    @app.post("/async/heroes", status_code=201)
    async def acreate(name: str, session: SQLModelAsyncSession = Depends(db.async_session)) -> Hero:
        assert isinstance(session, SQLModelAsyncSession)
        hero = Hero(name=name)
        session.add(hero)
        await session.flush()
        return hero

    with TestClient(app) as client:
        yield client


def test_request_sessions_are_sqlmodel_sessions(
    client: TestClient, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/heroes", params={"name": "ada"})

    assert response.status_code == 201
    assert response.json()["name"] == "ada"
    assert isinstance(response.json()["id"], int)
    assert backend.count("heroes") == 1


def test_transactions_are_sqlmodel_sessions(db: DatabaseSessionManager, backend: Backend) -> None:
    with db.transaction() as session:
        assert isinstance(session, sqlmodel.Session)
        session.add(Hero(name="ada"))
    with db.transaction() as session:
        assert [hero.name for hero in session.exec(select(Hero))] == ["ada"]
    db.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_transactions_are_sqlmodel_sessions(
    db: DatabaseSessionManager, backend: Backend, anyio_backend: str
) -> None:
    async with db.async_transaction() as session:
        assert isinstance(session, SQLModelAsyncSession)
        session.add(Hero(name="ada"))
    async with db.async_transaction() as session:
        heroes = (await session.exec(select(Hero))).all()
        assert [hero.name for hero in heroes] == ["ada"]
    await db.async_dispose()
