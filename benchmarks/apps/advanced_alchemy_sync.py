"""advanced-alchemy, sync, as its FastAPI docs wire it: ``AdvancedAlchemy``, ``provide_session()``.

``commit_mode="autocommit"`` (commit on 2xx); ``pool_pre_ping=True`` and the shared pool settings
through ``EngineConfig``; everything else left at the library's defaults.
"""

from typing import Annotated

from advanced_alchemy.extensions.fastapi import (
    AdvancedAlchemy,
    EngineConfig,
    SQLAlchemySyncConfig,
)
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from apps.common import add_sync_routes, settings

config = SQLAlchemySyncConfig(
    connection_string=settings.url("psycopg"),
    engine_config=EngineConfig(**settings.engine_options),
    commit_mode="autocommit",
)
app = FastAPI()
alchemy = AdvancedAlchemy(config=config, app=app)
add_sync_routes(app, Annotated[Session, Depends(alchemy.provide_session())], commit=False)
