"""Async: AsyncSession per request, async services and units of work."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, transactional

# "sqlite:///./app.db" also gives "sqlite+aiosqlite:///./app.db" for async sessions;
# "postgresql+asyncpg://..." alone gives an async-only manager.
db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]
STATS: dict[str, int] = {}  # stands in for a cache


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    views: Mapped[int] = mapped_column(default=0)


class ArticleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    created_at: datetime
    views: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        async with db.async_engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:endpoints]
@app.post("/articles", status_code=201, response_model=ArticleOut)
async def publish(title: str, session: AsyncSessionDep) -> Article:
    if await session.scalar(select(Article.id).where(Article.title == title)) is not None:
        raise HTTPException(409, "an article with this title exists")  # rolls back
    article = Article(title=title)
    session.add(article)
    await session.flush()  # the id and the server defaults, in one round trip
    return article  # committed before the response is sent


@app.post("/articles/draft", status_code=201, response_model=ArticleOut)
async def publish_now(title: str, session: AsyncSessionDep) -> Article:
    article = Article(title=title)
    session.add(article)
    await session.commit()  # explicit commit: allowed
    return article  # expire_on_commit=False: no lazy load, no MissingGreenlet


# --8<-- [end:endpoints]


# --8<-- [start:services]
@transactional  # joins the request's AsyncSession
async def count_view(article_id: int, session: AsyncSession = CURRENT_SESSION) -> int:
    article = await session.get(Article, article_id)
    if article is None:
        raise HTTPException(404, "no such article")
    article.views += 1
    return article.views


async def refresh_stats() -> None:
    """A background task: the request is over, so open an async unit of work."""
    async with db.async_transaction() as session:
        total = await session.scalar(select(func.sum(Article.views))) or 0
        STATS["views"] = int(total)


@app.post("/articles/{article_id}/views")
async def view(article_id: int, session: AsyncSessionDep, tasks: BackgroundTasks) -> dict[str, int]:
    views = await count_view(article_id)
    tasks.add_task(refresh_stats)
    return {"views": views}


# --8<-- [end:services]
