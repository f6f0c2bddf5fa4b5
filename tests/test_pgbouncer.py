"""Behind a real PgBouncer in transaction mode, ``pgbouncer=True`` makes every driver safe.

PgBouncer (started by the harness, ``pool_mode = transaction``) hands each transaction to
whichever server connection is free, so a statement prepared in one transaction is missing, or
already there under the same name, in the next. 5 rounds of 50 concurrent requests
(SELECT + INSERT) go through the ASGI app; every response must be 2xx and every acknowledged
insert must be in the table, for psycopg 3 (sync and async), asyncpg and psycopg2, with the
library's checkout check and with SQLAlchemy's pre-ping (``pool_pre_ping=True``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from tests.clusters import Cluster, PgBouncer

pytestmark = [
    pytest.mark.topology,
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

ROUNDS = 5
CONCURRENT = 50


@dataclass
class Outcome:
    """What a load run saw: failed responses (with a sample of their bodies) and rows."""

    errors: int
    samples: list[str]
    acknowledged: int
    rows: int


@pytest.fixture
def bouncer_database(pg_primary: Cluster, pg_bouncer: PgBouncer) -> Iterator[str]:
    """A database of its own on the primary, with the ``hits`` table, dropped afterwards."""
    name = f"bouncer_{uuid.uuid4().hex[:10]}"
    pg_primary.create_database(name)
    pg_primary.execute(
        "CREATE TABLE hits (id bigserial PRIMARY KEY, label text NOT NULL)", database=name
    )
    yield name
    pg_bouncer.admin(f"KILL {name}")  # its server connections, so the database can be dropped
    pg_bouncer.admin(f"RESUME {name}")
    pg_primary.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def build_app(db: DatabaseSessionManager, *, is_async: bool) -> FastAPI:
    """One route: read the table, insert a row, answer with the new row's id."""
    app = FastAPI()
    if is_async:

        @app.post("/hits/{label}")
        async def add_async(label: str, session: AsyncSession = Depends(db.async_session)) -> int:
            await session.execute(text("SELECT count(*) FROM hits WHERE label = :l"), {"l": label})
            result = await session.execute(
                text("INSERT INTO hits (label) VALUES (:l) RETURNING id"), {"l": label}
            )
            return int(result.scalar_one())

    else:

        @app.post("/hits/{label}")
        def add(label: str, session: Session = Depends(db.session)) -> int:
            session.execute(text("SELECT count(*) FROM hits WHERE label = :l"), {"l": label})
            result = session.execute(
                text("INSERT INTO hits (label) VALUES (:l) RETURNING id"), {"l": label}
            )
            return int(result.scalar_one())

    return app


async def run_load(
    db: DatabaseSessionManager,
    *,
    is_async: bool,
    count_rows: Cluster,
    database: str,
    rounds: int = ROUNDS,
    concurrent: int = CONCURRENT,
) -> Outcome:
    """``rounds`` x ``concurrent`` requests at once; count failures and committed rows."""
    app = build_app(db, is_async=is_async)
    label = uuid.uuid4().hex[:8]
    statuses: list[int] = []
    samples: list[str] = []

    async def one(client: httpx.AsyncClient) -> None:
        try:
            response = await client.post(f"/hits/{label}")
        except Exception as exc:  # a failure raised through the ASGI transport
            statuses.append(599)
            samples.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        statuses.append(response.status_code)
        if response.status_code >= 300:
            samples.append(response.text[:200])

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(rounds):
            async with anyio.create_task_group() as group:
                for _ in range(concurrent):
                    group.start_soon(one, client)
    if is_async:
        await db.async_dispose()
    else:
        db.dispose()
    rows = count_rows.execute(
        "SELECT count(*) FROM hits WHERE label = %s", (label,), database=database
    )[0][0]
    ok = sum(1 for status in statuses if status < 300)
    return Outcome(len(statuses) - ok, samples[:3], ok, int(rows))


# (driver, async side?, extra engine options)
SETUPS = [
    pytest.param(("psycopg", False, {}), id="psycopg-sync"),
    pytest.param(("psycopg", True, {}), id="psycopg-async"),
    pytest.param(("asyncpg", True, {}), id="asyncpg"),
    pytest.param(("psycopg2", False, {}), id="psycopg2"),
    pytest.param(("psycopg", False, {"pool_pre_ping": True}), id="psycopg-sync-pre-ping"),
    pytest.param(("asyncpg", True, {"pool_pre_ping": True}), id="asyncpg-pre-ping"),
]


def _manager(
    bouncer: PgBouncer, driver: str, database: str, *, is_async: bool, **kwargs: object
) -> DatabaseSessionManager:
    url = bouncer.url(driver, database)
    if is_async:
        return DatabaseSessionManager(async_url=url, **kwargs)  # type: ignore[arg-type]
    return DatabaseSessionManager(url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("setup", SETUPS)
async def test_pgbouncer_preset_gives_no_errors_and_every_row(
    pg_bouncer: PgBouncer,
    pg_primary: Cluster,
    bouncer_database: str,
    setup: tuple[str, bool, dict[str, object]],
) -> None:
    driver, is_async, options = setup
    db = _manager(
        pg_bouncer,
        driver,
        bouncer_database,
        is_async=is_async,
        pgbouncer=True,
        engine_options={"pool_size": 10, "max_overflow": 10, **options},
    )
    outcome = await run_load(
        db, is_async=is_async, count_rows=pg_primary, database=bouncer_database
    )
    assert outcome.errors == 0, outcome.samples
    assert outcome.acknowledged == ROUNDS * CONCURRENT
    assert outcome.rows == outcome.acknowledged


PINGS = 40


@pytest.mark.parametrize(
    ("driver", "is_async"), [("psycopg", False), ("psycopg", True), ("asyncpg", True)]
)
async def test_pings_through_pgbouncer_during_load_all_answer(
    pg_bouncer: PgBouncer,
    pg_primary: Cluster,
    bouncer_database: str,
    driver: str,
    is_async: bool,
) -> None:
    """``db.ping()`` / ``db.async_ping()`` (the health check: one at a time, on connections of
    their own) answer every time while requests share PgBouncer's server connections."""
    db = _manager(pg_bouncer, driver, bouncer_database, is_async=is_async, pgbouncer=True)
    results: list[str] = []

    async def pings() -> None:
        for _ in range(PINGS):
            if is_async:
                result = await db.async_ping(timeout=5.0)
            else:
                result = await anyio.to_thread.run_sync(db.ping, 5.0)
            results.append(result.error or result.status)

    async with anyio.create_task_group() as group:
        group.start_soon(pings)
        outcome = await run_load(
            db, is_async=is_async, count_rows=pg_primary, database=bouncer_database, rounds=2
        )
    assert outcome.errors == 0, outcome.samples
    assert results == ["ok"] * PINGS
