"""A service layer with @transactional: transfers, an audit log, an e-mail after commit.

- ``transfer`` is a REQUIRED unit: it joins the request's transaction.
- ``audit`` is REQUIRES_NEW: its row survives when the transfer is refused and rolled back.
- the confirmation e-mail is queued with ``db.on_commit``: it is only "sent" if the transfer
  really committed.
- the endpoint retries serialization failures and deadlocks (PostgreSQL, MariaDB).

Run: ``uvicorn app:app --app-dir examples/service_layer`` (SQLite by default; set
DATABASE_URL for another database).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, Propagation, transactional

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./service_layer.db"))
SessionDep = Annotated[Session, Depends(db.session)]
OUTBOX: list[str] = []  # stands in for an e-mail service


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "example_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50), unique=True)
    balance: Mapped[int]


class AuditEntry(Base):
    __tablename__ = "example_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(200))


class InsufficientFunds(Exception):
    pass


# --8<-- [start:services]
@db.transactional(propagation=Propagation.REQUIRES_NEW)
def audit(message: str, session: Session = CURRENT_SESSION) -> None:
    """Committed on its own connection, whatever happens to the caller's transaction."""
    session.add(AuditEntry(message=message))


@transactional
def transfer(source: str, target: str, amount: int, session: Session = CURRENT_SESSION) -> int:
    """Move money; joins the caller's transaction (the request's)."""
    accounts = {
        account.owner: account
        for account in session.scalars(
            select(Account).where(Account.owner.in_([source, target])).with_for_update()
        )
    }
    if accounts[source].balance < amount:
        raise InsufficientFunds(f"{source} has {accounts[source].balance}, needs {amount}")
    accounts[source].balance -= amount
    accounts[target].balance += amount
    db.on_commit(lambda: OUTBOX.append(f"to {source}: you sent {amount} to {target}"))
    return accounts[source].balance


# --8<-- [end:services]


class TransferIn(BaseModel):
    source: str
    target: str
    amount: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        with db.transaction() as session:
            if session.scalar(select(Account).limit(1)) is None:
                session.add_all(
                    [Account(owner="ada", balance=100), Account(owner="bob", balance=0)]
                )
        yield


app = FastAPI(title="fastapi-dbsession service layer", lifespan=lifespan)


# --8<-- [start:endpoint]
@app.post("/transfers")
@transactional(retries=3)  # re-run on serialization failures and deadlocks
def post_transfer(body: TransferIn, session: SessionDep) -> dict[str, int]:
    audit(f"transfer {body.amount} from {body.source} to {body.target} requested")
    try:
        balance = transfer(body.source, body.target, body.amount)
    except InsufficientFunds as exc:
        raise HTTPException(409, str(exc)) from exc  # rolls back; the audit row stays
    return {"balance": balance}


# --8<-- [end:endpoint]


@app.get("/accounts")
def accounts(session: SessionDep) -> dict[str, int]:
    return {account.owner: account.balance for account in session.scalars(select(Account))}


@app.get("/audit")
def audit_log(session: SessionDep) -> list[str]:
    return list(session.scalars(select(AuditEntry.message).order_by(AuditEntry.id)))
