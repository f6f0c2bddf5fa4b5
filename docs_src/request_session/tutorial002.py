"""Commit policies: the manager's default, and "manual" / "read_only" routes."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "sqlite:///./app.db"),
    commit_policy="commit",  # the default: commit when the endpoint succeeds
)
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:manual]
@app.post("/tags/import", dependencies=[Depends(db.commit_policy("manual"))])
def import_tags(names: list[str], session: SessionDep) -> dict[str, int]:
    imported = 0
    for start in range(0, len(names), 100):
        session.add_all(Tag(name=name) for name in names[start : start + 100])
        session.commit()  # you decide when: each batch is committed on its own
        imported += len(names[start : start + 100])
    session.add(Tag(name="not-committed"))  # "manual" never commits for you: rolled back
    return {"imported": imported}


# --8<-- [end:manual]


# --8<-- [start:read_only]
@app.post("/tags/dry-run", dependencies=[Depends(db.commit_policy("read_only"))])
def dry_run(names: list[str], session: SessionDep) -> dict[str, int]:
    session.add_all(Tag(name=name) for name in names)
    session.flush()  # the database checks the rows...
    return {"would_have": session.scalar(select(func.count()).select_from(Tag)) or 0}
    # ...and "read_only" always rolls back


# --8<-- [end:read_only]
