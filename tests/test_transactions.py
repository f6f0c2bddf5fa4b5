"""db.transaction() / db.async_transaction(): units of work outside requests."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from fastapi_dbsession import DatabaseSessionManager, NoActiveSessionError, SessionFinishedError
from tests.conftest import Backend, PoolWatch
from tests.models import Item


class Boom(Exception):
    pass


@pytest.fixture
def db(backend: Backend) -> DatabaseSessionManager:
    return DatabaseSessionManager(backend.url, async_url=backend.async_url)


def test_transaction_commits_on_success(db: DatabaseSessionManager, backend: Backend) -> None:
    watch = PoolWatch(db.engine)
    with db.transaction() as session:
        session.add(Item(name="ada"))
        assert db.current_session() is session

    assert backend.names() == ["ada"]
    assert watch.out == 0
    db.dispose()


def test_transaction_rolls_back_on_error(db: DatabaseSessionManager, backend: Backend) -> None:
    watch = PoolWatch(db.engine)
    with pytest.raises(Boom), db.transaction() as session:
        session.add(Item(name="ada"))
        session.flush()
        raise Boom

    assert backend.count() == 0
    assert watch.out == 0
    db.dispose()


def test_session_used_after_its_block_fails_clearly(db: DatabaseSessionManager) -> None:
    with db.transaction() as session:
        pass
    with pytest.raises(SessionFinishedError, match=r"db\.transaction"):
        session.execute(text("SELECT 1"))
    with pytest.raises(NoActiveSessionError, match=r"with db\.transaction"):
        db.current_session()
    db.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_transaction_commits_and_rolls_back(
    db: DatabaseSessionManager, backend: Backend, anyio_backend: str
) -> None:
    watch = PoolWatch(db.async_engine)
    async with db.async_transaction() as session:
        session.add(Item(name="ada"))
        assert db.current_async_session() is session
    with pytest.raises(Boom):
        async with db.async_transaction() as session:
            session.add(Item(name="bob"))
            await session.flush()
            raise Boom

    assert backend.names() == ["ada"]
    assert watch.out == 0
    with pytest.raises(SessionFinishedError):
        await session.execute(text("SELECT 1"))
    with pytest.raises(NoActiveSessionError, match=r"async with db\.async_transaction"):
        db.current_async_session()
    await db.async_dispose()
