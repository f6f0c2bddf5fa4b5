"""The tutorial pattern as written, async: the same ``get_db`` on ``create_async_engine`` (asyncpg).

``engine = create_async_engine(url)`` with no ``pool_pre_ping``, ``SessionLocal =
async_sessionmaker(autocommit=False, autoflush=False, bind=engine)`` (its other defaults kept,
``expire_on_commit=True`` included: the write endpoint reads the new id before it commits), a
``get_db`` generator that closes the session, and the write endpoint commits itself. Only the
pool settings are passed, as for the sync twin.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from apps.common import add_async_routes, settings

engine = create_async_engine(settings.url("asyncpg"), **settings.pool_options)
SessionLocal = async_sessionmaker(autocommit=False, autoflush=False, bind=engine)


async def get_db() -> AsyncIterator[AsyncSession]:
    db = SessionLocal()
    try:
        yield db
    finally:
        await db.close()


app = FastAPI()
add_async_routes(app, Annotated[AsyncSession, Depends(get_db)], commit=True)
