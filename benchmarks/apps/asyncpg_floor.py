"""The floor: a raw asyncpg pool, one statement per request, no ORM (same routes and schemas)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException

from apps.common import INSERT_SQL, LIST_SQL, READ_SQL, Created, ItemIn, ItemOut, settings

pool: Any = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global pool  # noqa: PLW0603
    pool = await asyncpg.create_pool(
        settings.dsn, min_size=1, max_size=settings.pool_size + settings.max_overflow
    )
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}", response_model=ItemOut)
async def read_item(item_id: int) -> Any:
    async with pool.acquire(timeout=settings.pool_timeout) as connection:
        row = await connection.fetchrow(READ_SQL, item_id)
    if row is None:
        raise HTTPException(404, "item not found")
    return dict(row)


@app.post("/items", status_code=201, response_model=Created)
async def create_item(body: ItemIn) -> Any:
    async with pool.acquire(timeout=settings.pool_timeout) as connection:
        item_id = await connection.fetchval(INSERT_SQL, body.name, body.price)
    return {"id": item_id}


@app.get("/items", response_model=list[ItemOut])
async def list_items() -> Any:
    async with pool.acquire(timeout=settings.pool_timeout) as connection:
        rows = await connection.fetch(LIST_SQL)
    return [dict(row) for row in rows]
