"""Per-request cost of the observability options, as ratios to today's defaults in the same run.

Builds one app per configuration in this process (each with its own manager on the same
database), then drives them one request at a time with raw ASGI calls (no network), the
configurations interleaved round by round in a shuffled order. Each endpoint reads one row by
primary key (sync and async routes). Prints the median CPU microseconds (``process_time``, all
threads: the shared machine's load does not move it) per request of each
configuration and its ratio to ``baseline``; ``off`` is a second, identical default manager,
so its ratio is the noise of the run.

    .venv/bin/python benchmarks/observability_cost.py [--url URL] [--requests 400] [--rounds 7]
    .venv/bin/python benchmarks/observability_cost.py --instructions [--requests 30 --rounds 3]

``--instructions`` runs the same rounds under ``valgrind --tool=callgrind`` and counts the
instructions each request executes (every thread): on a shared, loaded machine the CPU time
still moves by tens of percent, the instruction count does not (see README, scenario 4).

Without ``--url`` it uses a SQLite file in a temporary directory. ``--url`` takes a sync URL
(postgresql+psycopg://...); its asyncio twin is derived.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager, ServerTimingMiddleware

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import instructions  # noqa: E402
from cpu_cost import Callgrind  # noqa: E402

CALLGRIND = Callgrind(None)


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_observability"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _build(
    url: str, options: dict[str, Any], extra: Callable[[DatabaseSessionManager, FastAPI], None]
) -> tuple[DatabaseSessionManager, FastAPI]:
    db = DatabaseSessionManager(url, **options)
    app = FastAPI()
    extra(db, app)

    @app.get("/sync/{row_id}")
    def sync_read(row_id: int, session: Session = Depends(db.session)) -> str:
        return session.scalars(select(Row.name).where(Row.id == row_id)).one()

    @app.get("/async/{row_id}")
    async def async_read(row_id: int, session: AsyncSession = Depends(db.async_session)) -> str:
        return (await session.scalars(select(Row.name).where(Row.id == row_id))).one()

    return db, app


def _nothing(db: DatabaseSessionManager, app: FastAPI) -> None:
    return None


def _middleware(db: DatabaseSessionManager, app: FastAPI) -> None:
    app.add_middleware(ServerTimingMiddleware)


def _prometheus(db: DatabaseSessionManager, app: FastAPI) -> None:
    db.prometheus_metrics(CollectorRegistry())


CONFIGURATIONS: dict[
    str, tuple[dict[str, Any], Callable[[DatabaseSessionManager, FastAPI], None]]
] = {
    "baseline": ({}, _nothing),
    "off": ({}, _nothing),
    "record_queries": ({"record_queries": True}, _nothing),
    "record_queries+Server-Timing": ({"record_queries": True}, _middleware),
    "slow_query_threshold": ({"slow_query_threshold": 1.0}, _nothing),
    "hold_warning_threshold": ({"hold_warning_threshold": 5.0}, _nothing),
    "all logs on": (
        {"record_queries": True, "slow_query_threshold": 1.0, "hold_warning_threshold": 5.0},
        _middleware,
    ),
    "prometheus_metrics": ({}, _prometheus),
}


async def _call(app: Any, path: str) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    await app(scope, receive, send)
    return status


async def _batch(app: Any, side: str, requests: int, label: str | None = None) -> float:
    gc.collect()
    CALLGRIND.zero()
    started = time.process_time()  # CPU of every thread of this process
    for number in range(requests):
        status = await _call(app, f"/{side}/{1 + number % 10}")
        if status != 200:
            raise RuntimeError(f"/{side} answered {status}")
    elapsed = time.process_time() - started
    CALLGRIND.dump(label)
    return elapsed / requests * 1e6


async def main(url: str, requests: int, rounds: int) -> None:
    setup = DatabaseSessionManager(url)
    Base.metadata.drop_all(setup.engine)
    Base.metadata.create_all(setup.engine)
    with setup.transaction() as session:
        session.add_all(Row(id=n, name=f"row {n}") for n in range(1, 11))
    setup.dispose()

    apps = {name: _build(url, *spec) for name, spec in CONFIGURATIONS.items()}
    for _, app in apps.values():  # warm up: engines, pools, compiled statements
        for side in ("sync", "async"):
            await _batch(app, side, 20)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        order = [(name, side) for name in apps for side in ("sync", "async")]
        random.shuffle(order)
        for name, side in order:
            label = f"fdbs|{name}|{side}|{requests}"
            cpu = await _batch(apps[name][1], side, requests, label)
            results.setdefault((name, side), []).append(cpu)
    for db, _ in apps.values():
        db.dispose()
        await db.async_dispose()
    cleanup = DatabaseSessionManager(url)
    Base.metadata.drop_all(cleanup.engine)
    cleanup.dispose()

    _table(f"CPU us/request, {url.split('://', 1)[0]}", results, requests, rounds)


def _table(
    title: str, results: dict[tuple[str, str], list[float]], requests: int, rounds: int
) -> None:
    print(f"{title}; {requests} requests x {rounds} rounds, medians; ratio: to baseline")
    print(f"{'configuration':32} {'side':6} {'per request':>12} {'ratio':>7}")
    for side in ("sync", "async"):
        base = statistics.median(results["baseline", side])
        for name in CONFIGURATIONS:
            value = statistics.median(results[name, side])
            print(f"{name:32} {side:6} {value:12.1f} {value / base:7.3f}")


def count_instructions(url: str | None, requests: int, rounds: int) -> None:
    """Run this script under callgrind and print instructions per request."""
    problem = instructions.missing_tools()
    if problem:
        raise SystemExit(problem)
    with tempfile.TemporaryDirectory() as directory:
        dumps = Path(directory)
        shim = instructions.build_shim(dumps)
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={dumps}/callgrind.out.%p",
            "--dump-line=no",
            sys.executable,
            __file__,
            f"--requests={requests}",
            f"--rounds={rounds}",
            f"--callgrind-shim={shim}",
            *([f"--url={url}"] if url else []),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise SystemExit(completed.stderr[-3000:])
        runs = instructions.read_dumps(dumps)
    results = {
        (name, side): values for name, sides in runs.items() for side, values in sides.items()
    }
    _table("instructions/request (callgrind)", results, requests, rounds)
    shutil.rmtree(dumps, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--callgrind-shim", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the INFO lines are formatted only if enabled
    if arguments.instructions:
        count_instructions(arguments.url, arguments.requests, arguments.rounds)
        raise SystemExit(0)
    CALLGRIND = Callgrind(arguments.callgrind_shim)
    with tempfile.TemporaryDirectory() as directory:
        target = arguments.url or f"sqlite:///{Path(directory) / 'bench.db'}"
        asyncio.run(main(target, arguments.requests, arguments.rounds))
