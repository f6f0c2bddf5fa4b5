"""The request session: flush for ids, status codes, HTTPException, the injected Response."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Wallet(Base):
    __tablename__ = "wallets"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), unique=True)
    balance: Mapped[int]


class ProductIn(BaseModel):
    name: str


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):
        Base.metadata.create_all(db.engine)
        yield


app = FastAPI(lifespan=lifespan)


# --8<-- [start:flush]
@app.post("/products", status_code=201, response_model=ProductOut)
def create_product(product: ProductIn, session: SessionDep) -> Product:
    row = Product(name=product.name)
    session.add(row)
    session.flush()  # INSERT ... RETURNING id, created_at
    return row  # serialized with its id; committed before the response is sent


# --8<-- [end:flush]


@app.post("/wallets", status_code=201)
def open_wallet(owner: str, balance: int, session: SessionDep) -> dict[str, int]:
    session.add(Wallet(owner=owner, balance=balance))
    return {"balance": balance}


def find_wallet(session: Session, owner: str) -> Wallet:
    wallet = session.scalar(select(Wallet).where(Wallet.owner == owner))
    if wallet is None:
        raise HTTPException(404, "no such wallet")  # any exception rolls back
    return wallet


# --8<-- [start:injected_response]
@app.post("/wallets/{owner}/withdraw")
def withdraw(owner: str, amount: int, response: Response, session: SessionDep) -> dict[str, int]:
    wallet = find_wallet(session, owner)
    wallet.balance -= amount
    session.flush()
    if wallet.balance < 0:
        response.status_code = 409  # an error status on the injected Response: rollback
    return {"balance": wallet.balance}


# --8<-- [end:injected_response]


# --8<-- [start:returned_response]
@app.post("/wallets/{owner}/withdraw-unchecked")
def withdraw_unchecked(owner: str, amount: int, session: SessionDep) -> JSONResponse:
    wallet = find_wallet(session, owner)
    wallet.balance -= amount
    if wallet.balance < 0:
        # A *returned* Response is invisible to dependencies: this still COMMITS.
        return JSONResponse({"detail": "insufficient funds"}, status_code=409)
    return JSONResponse({"balance": wallet.balance})


# --8<-- [end:returned_response]
