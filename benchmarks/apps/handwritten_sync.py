"""The tutorial's ``get_db`` with ``pool_pre_ping=True``, sync: a reference (psycopg 3).

engine + SessionLocal + a ``get_db`` generator; the endpoint commits itself, as in FastAPI's SQL
tutorial. Engine options: ``pool_pre_ping=True`` and the shared pool settings, exactly what
fastapi_dbsession uses by default, so it isolates what the library costs beyond the ping. The
headline baseline is ``tutorial_sync`` (no pre-ping, as the tutorial is written).
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from apps.common import add_sync_routes, settings

engine = create_engine(settings.url("psycopg"), **settings.engine_options)
SessionLocal = sessionmaker(autoflush=False, bind=engine)


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


app = FastAPI()
add_sync_routes(app, Annotated[Session, Depends(get_db)], commit=True)
