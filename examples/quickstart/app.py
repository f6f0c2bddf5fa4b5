"""Quickstart: a FastAPI app whose sessions commit before the response, on SQLite.

Run it with ``scripts/example.sh`` from the repository root, or:
``uvicorn app:app --app-dir examples/quickstart``. Set DATABASE_URL to use another database.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./quickstart.db"))
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class NoteIn(BaseModel):
    title: str


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    created_at: datetime


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):  # checks the database, disposes the engine at shutdown
        Base.metadata.create_all(db.engine)  # a real app runs its migrations instead
        yield


app = FastAPI(title="fastapi-dbsession quickstart", lifespan=lifespan)


@app.post("/notes", status_code=201)
def create_note(note: NoteIn, session: SessionDep) -> NoteOut:
    if session.scalar(select(Note).where(Note.title == note.title)) is not None:
        raise HTTPException(409, "a note with this title exists")  # rolls back
    row = Note(title=note.title)
    session.add(row)
    session.flush()  # assigns the id; the commit happens before the response is sent
    return NoteOut.model_validate(row)


@app.get("/notes")
def list_notes(session: SessionDep) -> list[NoteOut]:
    notes = session.scalars(select(Note).order_by(Note.id))
    return [NoteOut.model_validate(note) for note in notes]


@app.get("/notes/{note_id}")
def get_note(note_id: int, session: SessionDep) -> NoteOut:
    note = session.get(Note, note_id)
    if note is None:
        raise HTTPException(404, "no such note")
    return NoteOut.model_validate(note)
