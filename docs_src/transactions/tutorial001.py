"""@transactional services: join the request's transaction, savepoints, units for scripts."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, Propagation, transactional

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    sku: Mapped[str] = mapped_column(String(100))


class OutOfStock(Exception):
    pass


# --8<-- [start:services]
@transactional  # REQUIRED: joins the caller's transaction (here: the request's)
def place_order(customer: str, skus: list[str], session: Session = CURRENT_SESSION) -> Order:
    order = Order(customer=customer)
    session.add(order)
    session.flush()
    for sku in skus:
        with suppress(OutOfStock):  # its savepoint rolled back; the order goes on without it
            add_line(order.id, sku)
    return order


@transactional(propagation=Propagation.NESTED)  # a SAVEPOINT inside the caller's transaction
def add_line(order_id: int, sku: str, session: Session = CURRENT_SESSION) -> None:
    session.add(OrderLine(order_id=order_id, sku=sku))
    session.flush()
    if sku.startswith("sold-out"):
        raise OutOfStock(sku)


@db.transactional(read_only=True)  # for scripts and workers: opens a session of its own
def count_lines(session: Session = CURRENT_SESSION) -> int:
    return session.scalar(select(func.count()).select_from(OrderLine)) or 0


# --8<-- [end:services]


class OrderIn(BaseModel):
    customer: str
    skus: list[str]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:endpoint]
@app.post("/orders", status_code=201)
def create_order(body: OrderIn, session: SessionDep) -> dict[str, int]:
    order = place_order(body.customer, body.skus)  # takes the request's session
    lines = session.scalar(select(func.count()).where(OrderLine.order_id == order.id))
    return {"id": order.id, "lines": lines or 0}  # sees the lines: same transaction


# --8<-- [end:endpoint]
