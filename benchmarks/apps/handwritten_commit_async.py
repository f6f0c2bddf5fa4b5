"""The hand-written pattern made as safe as fastapi_dbsession's default, async (asyncpg).

``get_db`` commits when the endpoint succeeds and rolls back otherwise, as a function-scoped
yield dependency (FastAPI 0.121+), so the transaction ends *before* the response is sent and a
failing commit reaches the client. Same engine options as ``handwritten_*``
(``pool_pre_ping=True``). It shows what the tutorial's numbers owe to ending its transaction
after the response.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from apps.common import add_async_routes, settings

engine = create_async_engine(settings.url("asyncpg"), **settings.engine_options)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as db:
        try:
            yield db
        except BaseException:
            await db.rollback()
            raise
        await db.commit()


app = FastAPI()
add_async_routes(app, Annotated[AsyncSession, Depends(get_db, scope="function")], commit=False)
