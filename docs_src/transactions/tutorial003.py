"""on_commit / on_rollback: side effects that follow the transaction's real outcome."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]
OUTBOX: list[str] = []  # stands in for an e-mail service
RELEASED: list[str] = []  # stands in for a reservation service


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:hooks]
@app.post("/members", status_code=201)
def sign_up(email: str, session: SessionDep) -> dict[str, int]:
    member = Member(email=email)
    session.add(member)
    session.flush()
    db.on_commit(lambda: OUTBOX.append(f"welcome, {email}"))  # only if it really commits
    db.on_rollback(lambda: RELEASED.append(email))  # only if it rolls back
    if email.endswith("@blocked.example"):
        raise HTTPException(403, "this domain is blocked")  # rollback: no welcome e-mail
    return {"id": member.id}


# --8<-- [end:hooks]
