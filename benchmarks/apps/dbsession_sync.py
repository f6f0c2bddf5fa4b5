"""fastapi_dbsession, sync: ``Depends(db.session)`` on postgresql+psycopg, library defaults."""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from apps.common import add_sync_routes, settings
from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(settings.url("psycopg"), engine_options=settings.pool_options)
app = FastAPI(lifespan=db.lifespan)
add_sync_routes(app, Annotated[Session, Depends(db.session)], commit=False)
