"""The app the reliability suite serves with uvicorn: keyed writes, pool and memory figures.

FDBS_URL / FDBS_ASYNC_URL name the database, FDBS_POOL_SIZE the pool (default 5). A write
answered with a :class:`CommitOutcomeUnknownError` keeps the status an unhandled error gets
(500) and is tagged ``x-commit-outcome: unknown`` so that the client can count it apart.
"""

import os
import resource

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import CommitOutcomeUnknownError, DatabaseSessionManager
from tests.reliability.audit import AUDIT, IN_DOUBT_HEADER

db = DatabaseSessionManager(
    os.environ["FDBS_URL"],
    async_url=os.environ["FDBS_ASYNC_URL"],
    engine_options={"pool_size": int(os.environ.get("FDBS_POOL_SIZE", "5")), "max_overflow": 0},
)
app = FastAPI(lifespan=db.lifespan)


@app.exception_handler(CommitOutcomeUnknownError)
async def in_doubt(request: Request, exc: CommitOutcomeUnknownError) -> PlainTextResponse:
    return PlainTextResponse(
        "Internal Server Error", status_code=500, headers={IN_DOUBT_HEADER: "unknown"}
    )


@app.get("/up")
async def up() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/sync/{key}")
def sync_write(key: str, session: Session = Depends(db.session)) -> int:
    session.execute(insert(AUDIT).values(k=key))
    return int(session.execute(select(func.count()).where(AUDIT.c.k == key)).scalar_one())


@app.post("/async/{key}")
async def async_write(key: str, session: AsyncSession = Depends(db.async_session)) -> int:
    await session.execute(insert(AUDIT).values(k=key))
    return int((await session.execute(select(func.count()).where(AUDIT.c.k == key))).scalar_one())


@app.get("/figures")
def figures() -> dict[str, int]:
    """Connections checked out of each pool, and this process's resident memory (KiB)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return {
        "sync_checked_out": db.engine.pool.checkedout(),  # type: ignore[attr-defined]
        "async_checked_out": db.async_engine.pool.checkedout(),  # type: ignore[attr-defined]
        "rss_kib": resident_pages * resource.getpagesize() // 1024,
    }
