"""Background tasks, streaming responses and WebSockets: work after the request session."""

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, WebSocket
from fastapi.responses import StreamingResponse
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    receipt_sent: Mapped[bool] = mapped_column(default=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:background]
def send_receipt(order_id: int) -> None:
    """Runs after the response: the request session is finished, so open a unit of work."""
    with db.transaction() as session:
        order = session.get(Order, order_id)
        assert order is not None
        order.receipt_sent = True  # ...and e-mail the receipt


@app.post("/orders", status_code=202)
def place_order(item: str, session: SessionDep, tasks: BackgroundTasks) -> dict[str, int]:
    order = Order(item=item)
    session.add(order)
    session.flush()
    tasks.add_task(send_receipt, order.id)  # pass ids, not ORM objects or the session
    return {"id": order.id}


# --8<-- [end:background]


# --8<-- [start:streaming]
@app.get("/orders.csv")
def export_orders() -> StreamingResponse:
    def lines() -> Iterator[str]:
        last_id = 0
        while True:  # one short transaction per batch, none held while the client reads
            with db.transaction(read_only=True) as session:
                batch = session.execute(
                    select(Order.id, Order.item)
                    .where(Order.id > last_id)
                    .order_by(Order.id)
                    .limit(500)
                ).all()
            if not batch:
                return
            for order_id, item in batch:
                yield f"{order_id},{item}\n"
            last_id = batch[-1].id

    return StreamingResponse(lines(), media_type="text/csv")


# --8<-- [end:streaming]


# --8<-- [start:websocket]
@app.websocket("/orders/live")
async def take_orders(socket: WebSocket, session: AsyncSessionDep) -> None:
    await socket.accept()
    item = await socket.receive_text()
    order = Order(item=item)
    session.add(order)
    await session.flush()
    await socket.send_text(f"order {order.id} taken")
    await socket.close()
    # committed when the endpoint returns; rolled back if it raises


# --8<-- [end:websocket]
