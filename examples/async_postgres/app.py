"""An async FastAPI app on PostgreSQL (asyncpg): todo lists with Depends(db.async_session).

- every endpoint is ``async def`` and takes the request's ``AsyncSession``;
- the transaction commits before the response is sent, and rolls back on any error;
- an async ``@transactional`` service joins the request's transaction;
- a background task opens its own unit of work with ``db.async_transaction()``.

Run: see README.md. DATABASE_URL must name an asyncio driver, e.g.
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, transactional

# An asyncio URL given alone is the manager's async URL (its sync twin is psycopg).
db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    engine_options={"pool_size": 10, "max_overflow": 5, "pool_timeout": 10},
)
AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]
DIGESTS: list[str] = []  # stands in for a notification service


class Base(DeclarativeBase):
    pass


class TodoList(Base):
    __tablename__ = "todo_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("todo_lists.id"))
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False)


class TodoListOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime


class TodoIn(BaseModel):
    title: str


class TodoOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    done: bool


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):  # checks PostgreSQL answers; disposes the pool at shutdown
        async with db.async_engine.begin() as connection:  # a real app runs migrations
            await connection.run_sync(Base.metadata.create_all)
        yield


app = FastAPI(title="fastapi-dbsession async PostgreSQL example", lifespan=lifespan)


@transactional  # joins the request's transaction
async def add_todos(
    list_id: int, titles: list[str], session: AsyncSession = CURRENT_SESSION
) -> int:
    if await session.get(TodoList, list_id) is None:
        raise HTTPException(404, "no such list")
    session.add_all(Todo(list_id=list_id, title=title) for title in titles)
    await session.flush()
    return len(titles)


async def send_digest(list_id: int) -> None:
    """Runs after the response: the request session is finished, so open a unit of work."""
    async with db.async_transaction(read_only=True) as session:
        open_count = await session.scalar(
            select(func.count()).where(Todo.list_id == list_id, Todo.done.is_(False))
        )
    DIGESTS.append(f"list {list_id}: {open_count} open")


@app.post("/lists", status_code=201, response_model=TodoListOut)
async def create_list(name: str, session: AsyncSessionDep) -> TodoList:
    if await session.scalar(select(TodoList.id).where(TodoList.name == name)) is not None:
        raise HTTPException(409, "a list with this name exists")
    todo_list = TodoList(name=name)
    session.add(todo_list)
    await session.flush()  # id and created_at, loaded by INSERT ... RETURNING
    return todo_list


@app.post("/lists/{list_id}/todos", status_code=201)
async def create_todos(
    list_id: int, todos: list[TodoIn], session: AsyncSessionDep, tasks: BackgroundTasks
) -> dict[str, int]:
    added = await add_todos(list_id, [todo.title for todo in todos])
    if any(not todo.title.strip() for todo in todos):
        raise HTTPException(422, "empty title")  # rolls back every todo of this request
    tasks.add_task(send_digest, list_id)
    return {"added": added}


@app.post("/todos/{todo_id}/done", response_model=TodoOut)
async def mark_done(todo_id: int, session: AsyncSessionDep) -> Todo:
    todo = await session.get(Todo, todo_id)
    if todo is None:
        raise HTTPException(404, "no such todo")
    todo.done = True
    await session.commit()  # explicit commits are allowed
    return todo  # expire_on_commit=False: serializing it needs no lazy load (no MissingGreenlet)


@app.get("/lists/{list_id}/todos", response_model=list[TodoOut])
async def list_todos(list_id: int, session: AsyncSessionDep) -> list[Todo]:
    return list(
        await session.scalars(select(Todo).where(Todo.list_id == list_id).order_by(Todo.id))
    )
