"""The same endpoint on db.session: the failing commit reaches the client as an error."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))


class Base(DeclarativeBase):
    pass


class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(100), unique=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:fixed]
@app.post("/coupons", status_code=201)
def create_coupon(code: str, session: Session = Depends(db.session)) -> dict[str, str]:
    session.add(Coupon(code=code))  # the INSERT is sent by the commit...
    return {"code": code}  # ...which happens before the response: a duplicate gets 500


# --8<-- [end:fixed]
