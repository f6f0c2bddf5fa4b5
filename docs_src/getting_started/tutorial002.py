"""Getting started: the same app, configured from the environment (PostgreSQL, MySQL...)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

# DATABASE_URL=postgresql+psycopg://app:secret@db.internal/app  (or mysql+pymysql://...)
# DATABASE_POOL_SIZE=10, DATABASE_MAX_OVERFLOW=5, DATABASE_POOL_TIMEOUT=10 (optional)
db = DatabaseSessionManager.from_env()
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/notes", status_code=201)
def create_note(title: str, session: SessionDep) -> dict[str, int]:
    note = Note(title=title)
    session.add(note)
    session.flush()
    return {"id": note.id}


@app.get("/notes/{note_id}")
def read_note(note_id: int, session: SessionDep) -> dict[str, str]:
    note = session.get(Note, note_id)
    if note is None:
        raise HTTPException(404, "no such note")
    return {"title": note.title}
