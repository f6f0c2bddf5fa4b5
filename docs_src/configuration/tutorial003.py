"""Lifespan: the manager's startup check and shutdown, inside a lifespan of your own."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
EVENTS: list[str] = []


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):  # raises DatabaseUnavailableError if the database is down
        with db.transaction() as session:  # e.g. warm a cache
            EVENTS.append(f"started, database answers {session.scalar(text('SELECT 1'))}")
        yield
    EVENTS.append("stopped, engines disposed")  # db.lifespan disposed them on the way out


app = FastAPI(lifespan=lifespan)
# --8<-- [end:lifespan]
