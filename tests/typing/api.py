"""Documented usage, type-checked: scripts/test.sh runs ``mypy --strict tests/typing``.

A decorator that lost the signature would make the ``# type: ignore[...]`` comments below
unused, which --strict reports as an error; a wrong return type fails the assignments.
"""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, Propagation, transactional

db = DatabaseSessionManager("sqlite:///./typing.db")
app = FastAPI(lifespan=db.lifespan)
SessionDep = Annotated[Session, Depends(db.session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]


@transactional
def create(session: Session, name: str) -> int:
    return len(name)


@transactional(propagation=Propagation.NESTED, retries=0)
async def acreate(session: AsyncSession, name: str) -> int:
    return len(name)


@db.transactional(read_only=True)
def report(session: Session = CURRENT_SESSION) -> list[str]:
    return []


@db.transactional
async def areport(session: AsyncSession = CURRENT_SESSION) -> list[str]:
    return []


@app.post("/items")
def endpoint(name: str, session: SessionDep) -> int:
    count: int = create(session, name)
    create(session, 1)  # type: ignore[arg-type]
    return count


@app.post("/aitems")
async def aendpoint(name: str, session: AsyncSessionDep) -> int:
    count: int = await acreate(session, name)
    await acreate(session, name=2)  # type: ignore[arg-type]
    return count


def unit_of_work() -> list[str]:
    with db.transaction(propagation=Propagation.REQUIRES_NEW, timeout=5.0) as session:
        session.execute_not_a_method  # type: ignore[attr-defined]  # noqa: B018
    rows: list[str] = report()
    db.on_commit(lambda: None)
    return rows


async def async_unit_of_work() -> list[str]:
    async with db.async_transaction(isolation_level="SERIALIZABLE") as session:
        await session.flush()
    current: AsyncSession = db.current_async_session()
    assert current is not None
    return await areport()


def operations() -> None:
    from fastapi_dbsession import (
        DatabaseSettings,
        PingResult,
        PoolStatus,
        compose_lifespans,
    )

    result: PingResult = db.ping(timeout=1.0)
    is_ok: bool = result.ok
    statuses: dict[str, PoolStatus] = db.pool_status()
    saturation: float | None = statuses["sync"].saturation
    app.include_router(db.health_router(prefix="/health", timeout=1.0))
    other = DatabaseSessionManager.from_settings(DatabaseSettings(), startup_retries=0)
    FastAPI(lifespan=compose_lifespans(db.lifespan, other.lifespan))
    print(is_ok, saturation)


async def async_operations() -> bool:
    return (await db.async_ping(timeout=1.0)).ok
