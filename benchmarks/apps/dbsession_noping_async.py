"""fastapi_dbsession, async, with ``pool_pre_ping=False``: what our defaults cost in round trips."""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common import add_async_routes, settings
from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(
    async_url=settings.url("asyncpg"),
    engine_options={**settings.pool_options, "pool_pre_ping": False},
)
app = FastAPI(lifespan=db.lifespan)
add_async_routes(app, Annotated[AsyncSession, Depends(db.async_session)], commit=False)
