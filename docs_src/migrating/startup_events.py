"""Startup events under a lifespan: @app.on_event("startup") moved into a lifespan of your own."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_dbsession import DatabaseSessionManager


class Base(DeclarativeBase):
    pass


class Flag(Base):
    __tablename__ = "startup_flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))


# --8<-- [start:lifespan]
# Before (skipped by FastAPI once lifespan=db.lifespan is given; the library warns):
#
#     @app.on_event("startup")
#     def on_startup() -> None:
#         create_db_and_tables()


def create_db_and_tables() -> None:
    Base.metadata.create_all(db.engine)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):  # the startup check, then your startup code
        create_db_and_tables()
        yield
        # shutdown code goes here, before db.lifespan disposes the engines


app = FastAPI(lifespan=lifespan)
# --8<-- [end:lifespan]
