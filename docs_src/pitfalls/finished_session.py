"""Using the request session after the request: a background task that keeps it."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI
from sqlalchemy import String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]
ERRORS: list[Exception] = []


class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    page: Mapped[str] = mapped_column(String(100))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:wrong]
@app.post("/visits", status_code=202)
def record_visit(page: str, session: SessionDep, tasks: BackgroundTasks) -> None:
    session.add(Visit(page=page))

    def count_later() -> None:
        try:
            session.execute(text("SELECT count(*) FROM visits"))  # the request is over
        except Exception as error:  # SessionFinishedError, pointing to db.transaction()
            ERRORS.append(error)

    tasks.add_task(count_later)


# --8<-- [end:wrong]
