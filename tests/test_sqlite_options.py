"""SQLite's defaults (foreign keys on, BEGIN taken over) can each be switched off or extended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKey, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager
from fastapi_dbsession.testing import isolated


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)


class Child(Base):
    __tablename__ = "children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("parents.id"))


def manager(tmp_path: Path, **engine_options: Any) -> DatabaseSessionManager:
    db = DatabaseSessionManager(f"sqlite:///{tmp_path / 'app.db'}", engine_options=engine_options)
    Base.metadata.create_all(db.engine)
    return db


def test_foreign_keys_are_enforced_by_default(tmp_path: Path) -> None:
    db = manager(tmp_path)
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(Child(parent_id=42))
    with db.transaction() as session:
        assert session.scalar(text("SELECT count(*) FROM children")) == 0
    db.dispose()


@pytest.mark.parametrize("switch_off", [None, False, "OFF"])
def test_foreign_keys_can_be_switched_off(tmp_path: Path, switch_off: object) -> None:
    db = manager(tmp_path, sqlite_pragmas={"foreign_keys": switch_off})
    with db.transaction() as session:  # a legacy schema with dangling references still loads
        session.add(Child(parent_id=42))
    with db.transaction() as session:
        assert session.scalar(text("SELECT count(*) FROM children")) == 1
        assert session.scalar(text("PRAGMA foreign_keys")) == 0
    db.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pragmas_apply_to_the_async_side_too(tmp_path: Path, anyio_backend: str) -> None:
    db = manager(tmp_path, sqlite_pragmas={"foreign_keys": None, "journal_mode": "WAL"})
    async with db.async_transaction() as session:
        assert await session.scalar(text("PRAGMA foreign_keys")) == 0
        assert await session.scalar(text("PRAGMA journal_mode")) == "wal"
    await db.async_dispose()
    db.dispose()


def test_begin_handling_can_be_left_to_pysqlite_and_isolation_still_holds(
    tmp_path: Path,
) -> None:
    db = manager(tmp_path, sqlite_explicit_begin=False)
    with isolated(db):
        with db.transaction() as session:
            session.add(Parent(id=1))  # the app commits (a RELEASE SAVEPOINT)...
        with db.transaction() as session:
            assert session.scalar(text("SELECT count(*) FROM parents")) == 1
    with db.transaction() as session:
        assert session.scalar(text("SELECT count(*) FROM parents")) == 0  # ...rolled back
    db.dispose()


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        (
            "postgresql+psycopg://app@localhost/app",
            {"sqlite_pragmas": {"foreign_keys": None}},
            "only applies to SQLite",
        ),
        ("sqlite://", {"sqlite_pragmas": {"x; DROP TABLE t": 1}}, "not a pragma SQLite accepts"),
        ("sqlite://", {"sqlite_pragmas": {"journal_mode": "WAL; --"}}, "not a pragma"),
        ("sqlite://", {"sqlite_pragmas": ["foreign_keys"]}, "must be Mapping"),
        ("sqlite://", {"sqlite_explicit_begin": "no"}, "must be bool"),
    ],
)
def test_bad_sqlite_options_are_refused_at_construction(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DatabaseSessionManager(url, engine_options=options)
