"""Resolve an unknown commit outcome with an idempotency key: retrying the request is safe."""

import os

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CommitOutcomeUnknownError, DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
app = FastAPI(lifespan=db.lifespan)


class Base(DeclarativeBase):
    pass


# --8<-- [start:app]
class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)  # one row per key
    amount: Mapped[int]


@app.exception_handler(CommitOutcomeUnknownError)
async def commit_outcome_unknown(request: Request, exc: CommitOutcomeUnknownError) -> Response:
    # Not "it failed": "retry with the same Idempotency-Key and you will learn".
    return JSONResponse({"detail": "outcome unknown, retry"}, 503, {"Retry-After": "1"})


@app.post("/payments", status_code=201)
def pay(
    amount: int,
    response: Response,
    idempotency_key: str = Header(),
    session: Session = Depends(db.session),
) -> dict[str, int]:
    done = session.scalar(select(Payment).where(Payment.idempotency_key == idempotency_key))
    if done is not None:  # the first attempt did commit: answer as it would have
        response.status_code = 200
        return {"id": done.id, "amount": done.amount}
    payment = Payment(idempotency_key=idempotency_key, amount=amount)
    session.add(payment)
    session.flush()
    return {"id": payment.id, "amount": payment.amount}


# --8<-- [end:app]


Base.metadata.create_all(db.engine)
