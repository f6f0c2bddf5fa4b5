"""A swallowed failure of a joined unit dooms the transaction; NESTED lets it fail alone."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, Propagation, transactional

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Booking(Base):
    __tablename__ = "bookings"

    id: Mapped[int] = mapped_column(primary_key=True)
    guest: Mapped[str] = mapped_column(String(100))


class Extra(Base):
    __tablename__ = "booking_extras"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class ExtraUnavailable(Exception):
    pass


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:swallowed]
@transactional  # REQUIRED: joins the request's transaction
def add_extra(name: str, session: Session = CURRENT_SESSION) -> None:
    session.add(Extra(name=name))
    session.flush()
    raise ExtraUnavailable(name)


@app.post("/bookings", status_code=201)
def book(guest: str, session: SessionDep) -> dict[str, str]:
    session.add(Booking(guest=guest))
    with suppress(ExtraUnavailable):
        add_extra("breakfast")  # failed and swallowed: the transaction is rollback-only
    return {"guest": guest}  # the commit raises UnexpectedRollbackError: 500, nothing saved


# --8<-- [end:swallowed]


# --8<-- [start:nested]
@transactional(propagation=Propagation.NESTED)  # a SAVEPOINT: may fail on its own
def try_extra(name: str, session: Session = CURRENT_SESSION) -> None:
    session.add(Extra(name=name))
    session.flush()
    raise ExtraUnavailable(name)


@app.post("/bookings/best-effort", status_code=201)
def book_best_effort(guest: str, session: SessionDep) -> dict[str, str]:
    session.add(Booking(guest=guest))
    with suppress(ExtraUnavailable):
        try_extra("breakfast")  # rolled back to its savepoint; the booking goes on
    return {"guest": guest}


# --8<-- [end:nested]
