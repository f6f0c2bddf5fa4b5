"""The ORM models the tests' apps use."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKeyConstraint, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlmodel import Field, SQLModel


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Ticket(Base):
    """A row whose foreign key is only checked at COMMIT (PostgreSQL, SQLite)."""

    __tablename__ = "tickets"

    __table_args__ = (  # MariaDB has no deferred constraints: its test kills the connection
        ForeignKeyConstraint(
            ["item_id"], ["items.id"], deferrable=True, initially="DEFERRED"
        ).ddl_if(dialect=("postgresql", "sqlite")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int]


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50), unique=True)
    balance: Mapped[int]


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(200))


class Hero(SQLModel, table=True):
    """A SQLModel table, for session_class=sqlmodel.Session."""

    __tablename__ = "heroes"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=50)


class ItemIn(BaseModel):
    name: str
    status: int | None = None
    raise_status: int | None = None


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
