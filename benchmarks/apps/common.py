"""Share the model, the schemas, the settings and the endpoint bodies every benchmark app serves.

Every SQLAlchemy app adds its routes through ``add_sync_routes`` / ``add_async_routes``, so the
endpoint code is identical by construction; an app only decides how the session arrives.
``GET /noop`` takes a session and never uses it: the in-process scenario times the session
machinery alone with it (no database round trip, so little noise).
Imports only FastAPI, pydantic and SQLAlchemy: the peers' venvs have nothing else of ours.
"""

# No "from __future__ import annotations": FastAPI reads the route signatures at runtime.
import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LIST_LIMIT = 50


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[int]


class ItemIn(BaseModel):
    name: str
    price: int


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    price: int


class Created(BaseModel):
    id: int


LIST_QUERY = select(Item).order_by(Item.id).limit(LIST_LIMIT)
LIST_SQL = f"SELECT id, name, price FROM items ORDER BY id LIMIT {LIST_LIMIT}"
READ_SQL = "SELECT id, name, price FROM items WHERE id = $1"
INSERT_SQL = "INSERT INTO items (name, price) VALUES ($1, $2) RETURNING id"


@dataclass(frozen=True)
class Settings:
    """Where the database is and how big the pool is, from BENCH_* environment variables."""

    host: str
    port: int
    user: str
    database: str
    pool_size: int
    max_overflow: int
    pool_timeout: float

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        return cls(
            host=env.get("BENCH_PG_HOST", "127.0.0.1"),
            port=int(env.get("BENCH_PG_PORT", "5432")),
            user=env.get("BENCH_PG_USER", "postgres"),
            database=env["BENCH_PG_DATABASE"],
            pool_size=int(env.get("BENCH_POOL_SIZE", "5")),
            max_overflow=int(env.get("BENCH_MAX_OVERFLOW", "10")),
            pool_timeout=float(env.get("BENCH_POOL_TIMEOUT", "30")),
        )

    def url(self, driver: str) -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def pool_options(self) -> dict[str, Any]:
        """The pool every SQLAlchemy implementation gets (SQLAlchemy's defaults: 5 + 10, 30 s)."""
        return {
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.pool_timeout,
        }

    @property
    def engine_options(self) -> dict[str, Any]:
        """``pool_options`` plus ``pool_pre_ping=True``, fastapi_dbsession's default."""
        return {"pool_pre_ping": True, **self.pool_options}


settings = Settings.from_env()


def add_sync_routes(app: FastAPI, session_type: Any, *, commit: bool) -> None:
    """Add the three endpoints as ``def`` routes; ``session_type`` is ``Annotated[..., Depends]``.

    ``commit=True`` is the hand-written pattern: the endpoint commits itself.
    """

    @app.get("/items/{item_id}", response_model=ItemOut)
    def read_item(item_id: int, session: session_type) -> Any:
        item = session.get(Item, item_id)
        if item is None:
            raise HTTPException(404, "item not found")
        return item

    @app.post("/items", status_code=201, response_model=Created)
    def create_item(body: ItemIn, session: session_type) -> Any:
        item = Item(name=body.name, price=body.price)
        session.add(item)
        session.flush()
        item_id = item.id
        if commit:
            session.commit()
        return {"id": item_id}

    @app.get("/items", response_model=list[ItemOut])
    def list_items(session: session_type) -> Any:
        return session.scalars(LIST_QUERY).all()

    @app.get("/noop")
    def noop(session: session_type) -> dict[str, bool]:  # the session machinery alone
        return {"ok": True}


def add_async_routes(app: FastAPI, session_type: Any, *, commit: bool) -> None:
    """Async twin of :func:`add_sync_routes`."""

    @app.get("/items/{item_id}", response_model=ItemOut)
    async def read_item(item_id: int, session: session_type) -> Any:
        item = await session.get(Item, item_id)
        if item is None:
            raise HTTPException(404, "item not found")
        return item

    @app.post("/items", status_code=201, response_model=Created)
    async def create_item(body: ItemIn, session: session_type) -> Any:
        item = Item(name=body.name, price=body.price)
        session.add(item)
        await session.flush()
        item_id = item.id
        if commit:
            await session.commit()
        return {"id": item_id}

    @app.get("/items", response_model=list[ItemOut])
    async def list_items(session: session_type) -> Any:
        return (await session.scalars(LIST_QUERY)).all()

    @app.get("/noop")
    async def noop(session: session_type) -> dict[str, bool]:  # the session machinery alone
        return {"ok": True}
