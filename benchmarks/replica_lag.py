"""Count read-your-writes misses on a hot standby: raw reads vs the library's routing.

Starts its own primary and hot standby (tests/clusters.py: initdb + ``pg_basebackup -R``, on
free ports, never 5432), then, for each side:

- raw: insert and commit one row on the primary, then at once read it on the standby;
  a read that does not find the row is a miss; the miss's lag is the time until the row shows
  up on the standby;
- routed: the same through fastapi_dbsession: ``POST`` writes with ``db.session``, the next
  ``GET`` reads with ``db.read_session`` (a replica), with and without a ``StickyWindow``.

Run from the repository root: ``python benchmarks/replica_lag.py [--rounds 1000]``.
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from tests.clusters import Cluster, Topology

from fastapi_dbsession import DatabaseSessionManager, StickyWindow

INSERT = "INSERT INTO notes (body) VALUES ('n') RETURNING id"
FIND = "SELECT count(*) FROM notes WHERE id = "
WHERE = "SELECT pg_is_in_recovery()"


def _lags(misses: list[float]) -> str:
    if not misses:
        return "no miss"
    ms = sorted(lag * 1000 for lag in misses)
    return f"lag of the misses: median {statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms"


def raw_sync(primary: Cluster, standby: Cluster, name: str, rounds: int) -> tuple[int, str]:
    lags: list[float] = []
    with primary.connect(name) as writer, standby.connect(name) as reader:
        for _ in range(rounds):
            row_id = writer.execute(INSERT).fetchone()[0]  # type: ignore[index]
            committed = time.perf_counter()
            if reader.execute(f"{FIND}{row_id}").fetchone()[0]:  # type: ignore[index]
                continue
            while not reader.execute(f"{FIND}{row_id}").fetchone()[0]:  # type: ignore[index]
                pass
            lags.append(time.perf_counter() - committed)
    return len(lags), _lags(lags)


async def raw_async(primary: Cluster, standby: Cluster, name: str, rounds: int) -> tuple[int, str]:
    writer = await asyncpg.connect(
        host="127.0.0.1", port=primary.port, user="postgres", database=name
    )
    reader = await asyncpg.connect(
        host="127.0.0.1", port=standby.port, user="postgres", database=name
    )
    lags: list[float] = []
    try:
        for _ in range(rounds):
            row_id = await writer.fetchval(INSERT)
            committed = time.perf_counter()
            if await reader.fetchval(f"{FIND}{row_id}"):
                continue
            while not await reader.fetchval(f"{FIND}{row_id}"):
                pass
            lags.append(time.perf_counter() - committed)
    finally:
        await writer.close()
        await reader.close()
    return len(lags), _lags(lags)


def routed(
    primary: Cluster, standby: Cluster, name: str, rounds: int, *, side: str, sticky: bool
) -> tuple[int, int]:
    """(misses, reads the standby served)."""
    db = DatabaseSessionManager(
        primary.url("psycopg", database=name),
        async_url=primary.url("asyncpg", database=name),
        replica_urls=[standby.url("psycopg", database=name)],
        sticky_window=StickyWindow(2.0, cookie="db_wrote") if sticky else None,
    )
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/sync")
    def sync_add(session: Annotated[Session, Depends(db.session)]) -> int:
        return int(session.scalar(text(INSERT)))

    @app.get("/sync/{row_id}")
    def sync_seen(row_id: int, session: Annotated[Session, Depends(db.read_session)]) -> list[bool]:
        return [bool(session.scalar(text(f"{FIND}{row_id}"))), session.scalar(text(WHERE))]

    @app.post("/async")
    async def async_add(session: Annotated[AsyncSession, Depends(db.async_session)]) -> int:
        return int(await session.scalar(text(INSERT)))

    @app.get("/async/{row_id}")
    async def async_seen(
        row_id: int, session: Annotated[AsyncSession, Depends(db.async_read_session)]
    ) -> list[bool]:
        found = bool(await session.scalar(text(f"{FIND}{row_id}")))
        return [found, bool(await session.scalar(text(WHERE)))]

    misses = on_standby = 0
    try:
        with TestClient(app) as client:
            for _ in range(rounds):
                row_id = client.post(f"/{side}").json()
                answer = client.get(f"/{side}/{row_id}").json()
                assert isinstance(answer, list), answer
                found, in_recovery = answer
                misses += not found
                on_standby += in_recovery
    finally:
        db.dispose()
    return misses, on_standby


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    rounds = parser.parse_args().rounds
    with Topology() as topology:
        primary = topology.primary()
        standby = topology.standby(primary)
        name = "replica_lag"
        primary.create_database(name)
        primary.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)", database=name)
        standby.wait_replayed()
        print(f"{rounds} writes, each read back at once from the standby")
        misses, lags = raw_sync(primary, standby, name, rounds)
        print(f"raw psycopg (sync):   {misses}/{rounds} misses; {lags}")
        misses, lags = asyncio.run(raw_async(primary, standby, name, rounds))
        print(f"raw asyncpg (async):  {misses}/{rounds} misses; {lags}")
        for side in ("sync", "async"):
            for sticky in (False, True):
                misses, on_standby = routed(
                    primary, standby, name, rounds, side=side, sticky=sticky
                )
                label = "StickyWindow(2.0)" if sticky else "no sticky window"
                print(
                    f"fastapi_dbsession {side:5} {label:18}: {misses}/{rounds} misses, "
                    f"{on_standby}/{rounds} reads served by the standby"
                )


if __name__ == "__main__":
    main()
