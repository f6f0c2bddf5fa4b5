"""Getting started: a sync FastAPI app whose session commits before the response."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))


# --8<-- [start:app]
db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):  # checks the database; disposes the engine at shutdown
        Base.metadata.create_all(db.engine)  # a real app runs its migrations instead
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/notes", status_code=201)
def create_note(title: str, session: Session = Depends(db.session)) -> dict[str, int]:
    note = Note(title=title)
    session.add(note)
    session.flush()  # sends the INSERT: the note gets its id
    return {"id": note.id}  # committed before the client sees this


# --8<-- [end:app]
