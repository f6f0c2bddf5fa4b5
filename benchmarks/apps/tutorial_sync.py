"""The tutorial pattern as written, sync: FastAPI's and SQLAlchemy's tutorial ``get_db`` (psycopg).

``engine = create_engine(url)`` with no ``pool_pre_ping``, ``SessionLocal = sessionmaker(
autocommit=False, autoflush=False, bind=engine)``, a ``get_db`` generator that closes the
session, and the write endpoint commits itself. The headline baseline of the benchmark: the
code users run before they switch to a library. Only the pool settings are passed (SQLAlchemy's
own defaults, 5 + 10 and 30 s, except in the pool-starvation scenario, which changes them for
every implementation alike).
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from apps.common import add_sync_routes, settings

engine = create_engine(settings.url("psycopg"), **settings.pool_options)
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


app = FastAPI()
add_sync_routes(app, Annotated[Session, Depends(get_db)], commit=True)
