"""The tutorial's ``get_db`` with ``pool_pre_ping=True``, async: a reference (asyncpg).

async engine + async_sessionmaker + ``get_db``; ``expire_on_commit=False`` as SQLAlchemy's
asyncio docs recommend (and fastapi_dbsession defaults to); ``pool_pre_ping=True`` and the
shared pool settings, fastapi_dbsession's defaults. The headline baseline is ``tutorial_async``
(no pre-ping, as the tutorial is written).
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from apps.common import add_async_routes, settings

engine = create_async_engine(settings.url("asyncpg"), **settings.engine_options)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_db() -> AsyncIterator[AsyncSession]:
    db = SessionLocal()
    try:
        yield db
    finally:
        await db.close()


app = FastAPI()
add_async_routes(app, Annotated[AsyncSession, Depends(get_db)], commit=True)
