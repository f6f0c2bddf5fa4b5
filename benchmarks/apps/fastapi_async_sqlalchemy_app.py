"""fastapi-async-sqlalchemy, as its README wires it: ``SQLAlchemyMiddleware`` + the global ``db``.

``commit_on_exit=True`` makes the middleware commit, as the other libraries do for us;
``pool_pre_ping=True`` and the shared pool settings go through ``engine_args``.
"""

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi_async_sqlalchemy import SQLAlchemyMiddleware, db

from apps.common import LIST_QUERY, Created, Item, ItemIn, ItemOut, settings

app = FastAPI()
app.add_middleware(
    SQLAlchemyMiddleware,
    db_url=settings.url("asyncpg"),
    engine_args=settings.engine_options,
    commit_on_exit=True,
)


@app.get("/items/{item_id}", response_model=ItemOut)
async def read_item(item_id: int) -> Any:
    item = await db.session.get(Item, item_id)
    if item is None:
        raise HTTPException(404, "item not found")
    return item


@app.post("/items", status_code=201, response_model=Created)
async def create_item(body: ItemIn) -> Any:
    item = Item(name=body.name, price=body.price)
    db.session.add(item)
    await db.session.flush()
    return {"id": item.id}


@app.get("/items", response_model=list[ItemOut])
async def list_items() -> Any:
    return (await db.session.scalars(LIST_QUERY)).all()


@app.get("/noop")
async def noop() -> dict[str, bool]:  # the middleware's session alone (the in-process scenario)
    return {"ok": True}
