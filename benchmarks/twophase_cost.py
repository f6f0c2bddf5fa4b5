"""Measure what ``twophase=True`` costs a request that writes to two databases.

Starts its own PostgreSQL primary (tests/clusters.py, on a free port, never 5432) with
``max_prepared_transactions = 10`` and two databases, then serves one route per side that
inserts a row into each database through two managers (``Depends(db_a.session)``,
``Depends(db_b.session)``), with and without ``twophase=True``, measured in the same run,
alternating rounds. Prints, per side and mode, the time per request (TestClient, in process),
the driver round trips per request (benchmarks/driver_calls.py's counters: every statement
and protocol call sent) and the ratio to one-phase commit, then the round trips of one request.

The harness's clusters run with ``fsync = off`` on ``/dev/shm`` when it exists; ``--fsync``
turns fsync on (still tmpfs there, so a disk's flush time is not in the figures: on real disks
PREPARE TRANSACTION and COMMIT PREPARED each wait for a WAL flush, as a COMMIT does).

Run from the repository root: ``python benchmarks/twophase_cost.py [--requests 1000] [--fsync]``.
"""

import argparse
import contextlib
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# driver_calls serves a counted app when run by run.py; here only its counters are used.
os.environ.setdefault("BENCH_COUNTED_APP", "builtins:object")

import driver_calls  # patches psycopg and asyncpg: import before any connection is made
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from tests.clusters import Cluster, Topology

from fastapi_dbsession import DatabaseSessionManager

INSERT = text("INSERT INTO notes (body) VALUES ('n')")
MODES = ("one-phase", "twophase")
_TPC = re.compile(r"COMPOSED\(\[SQL\('(\w+).*")  # psycopg's tpc_prepare() / tpc_commit()


def make_app(primary: Cluster, names: tuple[str, str], *, twophase: bool) -> FastAPI:
    db_a, db_b = (
        DatabaseSessionManager(
            primary.url("psycopg", database=name),
            async_url=primary.url("asyncpg", database=name),
            twophase=twophase,
            name=name,
        )
        for name in names
    )
    app = FastAPI()

    @app.post("/sync")
    def sync_write(
        a: Annotated[Session, Depends(db_a.session)], b: Annotated[Session, Depends(db_b.session)]
    ) -> None:
        a.execute(INSERT)
        b.execute(INSERT)

    @app.post("/async")
    async def async_write(
        a: Annotated[AsyncSession, Depends(db_a.async_session)],
        b: Annotated[AsyncSession, Depends(db_b.async_session)],
    ) -> None:
        await a.execute(INSERT)
        await b.execute(INSERT)

    return app


def measure(post: Callable[[], int], requests: int) -> tuple[float, float]:
    """Seconds and driver calls per request over ``requests`` requests."""
    calls = len(driver_calls.COUNTER.calls)
    started = time.perf_counter()
    for _ in range(requests):
        if post() != 200:
            raise SystemExit("a request failed: the figures would be wrong")
    elapsed = time.perf_counter() - started
    return elapsed / requests, (len(driver_calls.COUNTER.calls) - calls) / requests


def one_request(post: Callable[[], int]) -> str:
    start = len(driver_calls.COUNTER.calls)
    post()
    names = [_TPC.sub(r"\1 (psycopg tpc)", name) for name in driver_calls.COUNTER.calls[start:]]
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in Counter(names).items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per side and mode")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--fsync", action="store_true", help="run the cluster with fsync = on")
    options = parser.parse_args()
    settings = {"max_prepared_transactions": "10"}
    if options.fsync:
        settings.update(fsync="on", synchronous_commit="on")
    with Topology() as topology:
        primary = topology.primary(settings=settings)
        names = ("twophase_a", "twophase_b")
        for name in names:
            primary.create_database(name)
            primary.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)", database=name)
        stack = contextlib.ExitStack()  # one event loop per client: asyncpg's pools stay on it
        clients = {
            mode: stack.enter_context(
                TestClient(make_app(primary, names, twophase=mode == "twophase"))
            )
            for mode in MODES
        }
        per_round = max(1, options.requests // options.rounds)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        shapes: dict[tuple[str, str], str] = {}
        for side in ("sync", "async"):
            for mode, client in clients.items():
                post = lambda client=client, side=side: client.post(f"/{side}").status_code  # noqa: E731
                measure(post, 20)  # warm the pools
                shapes[side, mode] = one_request(post)
            for _ in range(options.rounds):
                for mode, client in clients.items():
                    post = lambda client=client, side=side: client.post(f"/{side}").status_code  # noqa: E731
                    results.setdefault((side, mode), []).append(measure(post, per_round))
        stack.close()
        left = primary.execute("SELECT count(*) FROM pg_prepared_xacts")[0][0]
    print(f"{per_round * options.rounds} requests per side and mode, {options.rounds} rounds, ")
    print(f"fsync {'on' if options.fsync else 'off'}; prepared transactions left: {left}\n")
    print("| side | mode | ms / request | round trips / request | time ratio | round trip ratio |")
    print("|---|---|---|---|---|---|")
    for side in ("sync", "async"):
        base_time, base_trips = _mean(results[side, "one-phase"])
        for mode in MODES:
            seconds, trips = _mean(results[side, mode])
            print(
                f"| {side} | {mode} | {seconds * 1000:.2f} | {trips:.1f} | "
                f"{seconds / base_time:.2f} | {trips / base_trips:.2f} |"
            )
    print("\nOne request's driver calls (both databases):")
    for (side, mode), shape in shapes.items():
        print(f"- {side}, {mode}: {shape}")


def _mean(samples: list[tuple[float, float]]) -> tuple[float, float]:
    times = sorted(seconds for seconds, _ in samples)
    trips = [count for _, count in samples]
    return times[len(times) // 2], sum(trips) / len(trips)  # median round, mean round trips


if __name__ == "__main__":
    main()
