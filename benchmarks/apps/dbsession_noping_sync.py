"""fastapi_dbsession, sync, with ``pool_pre_ping=False``: what our defaults cost in round trips."""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from apps.common import add_sync_routes, settings
from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(
    settings.url("psycopg"), engine_options={**settings.pool_options, "pool_pre_ping": False}
)
app = FastAPI(lifespan=db.lifespan)
add_sync_routes(app, Annotated[Session, Depends(db.session)], commit=False)
