"""The hand-written pattern made as safe as fastapi_dbsession's default, sync (psycopg 3).

``get_db`` commits when the endpoint succeeds and rolls back otherwise, as a function-scoped
yield dependency (FastAPI 0.121+), so the transaction ends *before* the response is sent and a
failing commit reaches the client. Same engine options as ``handwritten_*``
(``pool_pre_ping=True``). It shows what the tutorial's numbers owe to ending its transaction
after the response.
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from apps.common import add_sync_routes, settings

engine = create_engine(settings.url("psycopg"), **settings.engine_options)
SessionLocal = sessionmaker(autoflush=False, bind=engine, expire_on_commit=False)


def get_db() -> Iterator[Session]:
    with SessionLocal() as db:
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        db.commit()


app = FastAPI()
add_sync_routes(app, Annotated[Session, Depends(get_db, scope="function")], commit=False)
