"""Async concurrency: one AsyncSession per task, never one shared by several."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import Executable

from fastapi_dbsession import DatabaseSessionManager, Propagation

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]


class Base(DeclarativeBase):
    pass


class Reading(Base):
    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(primary_key=True)
    sensor: Mapped[str] = mapped_column(String(100))
    value: Mapped[int]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        async with db.async_engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:wrong]
@app.get("/sensors/wrong")
async def summary_wrong(session: AsyncSessionDep) -> dict[str, int]:
    count, total = await asyncio.gather(  # two tasks, one session: ConcurrentSessionUseError
        session.scalar(select(func.count()).select_from(Reading)),
        session.scalar(select(func.sum(Reading.value))),
    )
    return {"count": count or 0, "total": total or 0}


# --8<-- [end:wrong]


# --8<-- [start:right]
async def read_in_own_session(statement: Executable) -> int:
    # REQUIRES_NEW: a session and connection of its own, whatever is active around it
    async with db.async_transaction(propagation=Propagation.REQUIRES_NEW, read_only=True) as own:
        return await own.scalar(statement) or 0


@app.get("/sensors")
async def summary() -> dict[str, int]:
    count, total = await asyncio.gather(
        read_in_own_session(select(func.count()).select_from(Reading)),
        read_in_own_session(select(func.sum(Reading.value))),
    )
    return {"count": count, "total": total}


# --8<-- [end:right]


@app.post("/readings", status_code=201)
async def record(sensor: str, value: int, session: AsyncSessionDep) -> None:
    session.add(Reading(sensor=sensor, value=value))
