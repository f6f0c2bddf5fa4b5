"""Pool pressure: pool 2+0, slow sync and async endpoints, served by uvicorn in
tests/test_pool_pressure.py. FDBS_URL / FDBS_ASYNC_URL name the database, FDBS_POOL_TIMEOUT
the wait."""

import asyncio
import os
import time

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(
    os.environ["FDBS_URL"],
    async_url=os.environ["FDBS_ASYNC_URL"],
    engine_options={
        "pool_size": 2,
        "max_overflow": 0,
        "pool_timeout": float(os.environ.get("FDBS_POOL_TIMEOUT", "1")),
    },
)
app = FastAPI(lifespan=db.lifespan)
HOLD = 0.3


@app.get("/up")
async def up() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/sync/slow")
def slow(session: Session = Depends(db.session)) -> dict[str, int]:
    value = session.execute(text("SELECT 1")).scalar_one()
    time.sleep(HOLD)
    return {"value": value}


@app.get("/async/slow")
async def aslow(session: AsyncSession = Depends(db.async_session)) -> dict[str, int]:
    value = (await session.execute(text("SELECT 1"))).scalar_one()
    await asyncio.sleep(HOLD)
    return {"value": value}


@app.get("/checked-out")
async def checked_out() -> dict[str, int]:
    return {
        "sync": db.engine.pool.checkedout(),  # type: ignore[attr-defined]
        "async": db.async_engine.pool.checkedout(),  # type: ignore[attr-defined]
    }
