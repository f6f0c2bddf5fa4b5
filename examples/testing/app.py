"""A small library app, to show how its tests run: see conftest.py and test_app.py."""

import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./testing_example.db"))
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Book(Base):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100), unique=True)
    copies: Mapped[int] = mapped_column(default=1)


app = FastAPI(title="fastapi-dbsession testing example", lifespan=db.lifespan)


@app.post("/books", status_code=201)
def add_book(title: str, session: SessionDep) -> dict[str, int]:
    if session.scalar(select(Book).where(Book.title == title)) is not None:
        raise HTTPException(409, "this book is already in the catalogue")
    book = Book(title=title)
    session.add(book)
    session.flush()
    return {"id": book.id}


@app.post("/books/{book_id}/borrow")
def borrow(book_id: int, session: SessionDep) -> dict[str, int]:
    book = session.get(Book, book_id)
    if book is None:
        raise HTTPException(404, "no such book")
    if book.copies == 0:
        raise HTTPException(409, "no copy left")
    book.copies -= 1
    session.commit()  # the app commits by itself here: the test must still roll it back
    return {"copies": book.copies}


@app.get("/books")
def list_books(session: SessionDep) -> list[str]:
    return list(session.scalars(select(Book.title).order_by(Book.title)))
