"""Fork safety: a manager created before a pre-fork server forks never shares a connection."""

from __future__ import annotations

import asyncio
import os
import warnings

import pytest
from sqlalchemy import text

from fastapi_dbsession import DatabaseSessionManager
from tests.conftest import SERVERS, Backend

SERVER_BACKENDS = [SERVERS["postgresql"], SERVERS["mariadb"]]


def _connection_id_sql(backend: Backend) -> str:
    return "SELECT pg_backend_pid()" if backend.name == "postgresql" else "SELECT CONNECTION_ID()"


def _in_child(work: object) -> str:
    """Run ``work()`` in a forked child; return what it wrote (or its error)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        try:
            os.write(write_end, str(work()).encode())  # type: ignore[operator]
        except BaseException as exc:
            os.write(write_end, f"error: {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        written = pipe.read()
    os.waitpid(child, 0)
    return written


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
def test_sync_child_gets_its_own_connection_and_the_parents_keeps_working(
    backend: Backend,
) -> None:
    db = DatabaseSessionManager(backend.url, engine_options={"pool_size": 1, "max_overflow": 0})
    sql = text(_connection_id_sql(backend))
    with db.transaction() as session:
        parent_id = session.execute(sql).scalar_one()
    assert db.pool_status()["sync"].checked_out == 0  # one idle connection in the pool

    def child_work() -> object:
        with db.transaction() as session:
            return session.execute(sql).scalar_one()

    child_id = _in_child(child_work)

    assert child_id.isdigit(), child_id
    assert int(child_id) != parent_id  # the child never used the parent's connection...
    with db.transaction() as session:  # ...which is still the parent's, and still healthy
        assert session.execute(sql).scalar_one() == parent_id
    db.dispose()


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
def test_async_child_gets_its_own_connection(backend: Backend) -> None:
    db = DatabaseSessionManager(
        async_url=backend.async_url, engine_options={"pool_size": 1, "max_overflow": 0}
    )
    sql = text(_connection_id_sql(backend))

    async def connection_id() -> object:
        async with db.async_transaction() as session:
            return (await session.execute(sql)).scalar_one()

    async def parent_work() -> tuple[object, object]:
        first = await connection_id()
        child = await asyncio.to_thread(_in_child, lambda: asyncio.run(connection_id()))
        again = await connection_id()
        await db.async_dispose()
        return first, (child, again)

    parent_id, (child_id, again) = asyncio.run(parent_work())

    assert str(child_id).isdigit(), child_id
    assert int(child_id) != parent_id
    assert again == parent_id  # the parent's pooled connection survived the child
