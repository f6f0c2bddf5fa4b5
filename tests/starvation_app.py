"""The pool-starvation scenario: pool 3+0, sync and async endpoints with response_model.

Served by a real uvicorn process in tests/test_pool_starvation.py. FDBS_URL and FDBS_ASYNC_URL
name the database.
"""

import os
import time
from collections.abc import Iterator

from fastapi import Depends, FastAPI
from sqlalchemy import create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from fastapi_dbsession import DatabaseSessionManager
from tests.models import Item, ItemOut

db = DatabaseSessionManager(
    os.environ["FDBS_URL"],
    async_url=os.environ["FDBS_ASYNC_URL"],
    engine_options={"pool_size": 3, "max_overflow": 0, "pool_timeout": 10},
)
app = FastAPI(lifespan=db.lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/sync/items", response_model=list[ItemOut])
def list_items(session: Session = Depends(db.session)) -> list[Item]:
    items = list(session.scalars(select(Item).order_by(Item.id).limit(5)))
    time.sleep(0.02)  # hold the connection a little, as real work does
    return items


@app.get("/async/items", response_model=list[ItemOut])
async def alist_items(session: AsyncSession = Depends(db.async_session)) -> list[Item]:
    return list(await session.scalars(select(Item).order_by(Item.id).limit(5)))


@app.post("/sync/slow", status_code=201)
def slow(name: str, session: Session = Depends(db.session)) -> dict[str, str]:
    session.add(Item(name=name))
    session.flush()
    time.sleep(0.5)  # the client has given up and disconnected by now
    return {"status": "done"}


@app.post("/async/slow", status_code=201)
async def aslow(name: str, session: AsyncSession = Depends(db.async_session)) -> dict[str, str]:
    import asyncio

    session.add(Item(name=name))
    await session.flush()
    await asyncio.sleep(0.5)
    return {"status": "done"}


@app.get("/pool")
def pool_status() -> dict[str, int]:
    return {
        "sync": db.engine.pool.checkedout(),  # type: ignore[attr-defined]
        "async": db.async_engine.pool.checkedout(),  # type: ignore[attr-defined]
    }


# The control: the hand-written pattern on the same pool size (short timeout to finish fast).
handwritten_engine = create_engine(
    os.environ["FDBS_URL"], pool_size=3, max_overflow=0, pool_timeout=2, pool_pre_ping=True
)
SessionLocal = sessionmaker(bind=handwritten_engine)


def get_db() -> Iterator[Session]:
    session = SessionLocal()
    try:
        yield session
    finally:
        session.close()


@app.get("/handwritten/items", response_model=list[ItemOut])
def handwritten_list_items(session: Session = Depends(get_db)) -> list[Item]:
    items = list(session.scalars(select(Item).order_by(Item.id).limit(5)))
    time.sleep(0.02)
    return items
