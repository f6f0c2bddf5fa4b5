"""advanced-alchemy, async, as its FastAPI docs wire it: ``AdvancedAlchemy``, ``provide_session()``.

``commit_mode="autocommit"`` and ``AsyncSessionConfig(expire_on_commit=False)`` as in its
example; ``pool_pre_ping=True`` and the shared pool settings through ``EngineConfig``.
"""

from typing import Annotated

from advanced_alchemy.extensions.fastapi import (
    AdvancedAlchemy,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common import add_async_routes, settings

config = SQLAlchemyAsyncConfig(
    connection_string=settings.url("asyncpg"),
    engine_config=EngineConfig(**settings.engine_options),
    session_config=AsyncSessionConfig(expire_on_commit=False),
    commit_mode="autocommit",
)
app = FastAPI()
alchemy = AdvancedAlchemy(config=config, app=app)
add_async_routes(app, Annotated[AsyncSession, Depends(alchemy.provide_session())], commit=False)
