"""Drive a server over loopback: wrk when installed, else a small asyncio HTTP/1.1 client.

Run as a script (``python load.py MODE ...``), pinned to its own CPU, it prints one JSON line.
Modes: ``throughput`` (keep-alive connections for a fixed time: the fallback when wrk is
missing) and ``burst`` (N concurrent requests at once: the pool-starvation scenario).
Every loop is bounded by a deadline and a request count; only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
MAX_REQUESTS = 5_000_000  # a ceiling on any loop, far above what a few seconds can reach
WRITE_BODY = b'{"name":"bench","price":7}'


@dataclass
class Response:
    status: int
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection to the server (the responses have Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))
        header = await self._reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return Response(status, await self._reader.readexactly(length) if length else b"")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def request_for(endpoint: str, rows: int) -> tuple[str, str, bytes | None]:
    """The request wrk's bench.lua would send for ``endpoint``."""
    if endpoint == "read":
        return "GET", f"/items/{random.randint(1, rows)}", None
    if endpoint == "write":
        return "POST", "/items", WRITE_BODY
    return "GET", "/items", None


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    bad: int = 0
    socket_errors: int = 0
    latencies_us: list[float] = field(default_factory=list)


async def _worker(
    port: int, endpoint: str, *, rows: int, deadline: float, tally: Tally, record_after: float
) -> None:
    connection: Connection | None = None
    for _ in range(MAX_REQUESTS):
        if time.perf_counter() >= deadline:
            break
        try:
            if connection is None:
                connection = await Connection.open(port)
            method, path, body = request_for(endpoint, rows)
            started = time.perf_counter()
            tally.sent += 1
            response = await connection.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.socket_errors += 1
            connection = None
            continue
        if started >= record_after:
            tally.latencies_us.append((time.perf_counter() - started) * 1e6)
        if 200 <= response.status < 300:
            tally.ok += 1
        else:
            tally.bad += 1
    if connection is not None:
        await connection.close()


async def throughput(port: int, endpoint: str, rows: int, seconds: float, connections: int) -> dict:
    """Keep ``connections`` connections busy for ``seconds``; the shape of wrk's summary."""
    tally = Tally()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _worker(port, endpoint, rows=rows, deadline=deadline, tally=tally, record_after=started)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    latencies = tally.latencies_us or [0.0]
    return {
        "requests": tally.ok + tally.bad,
        "duration_us": elapsed * 1e6,
        "sent": tally.sent,
        "ok": tally.ok,
        "bad": tally.bad,
        "socket_errors": tally.socket_errors,
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
    }


async def _one(port: int, path: str, within: float, start: asyncio.Event) -> tuple[int, float]:
    connection = await Connection.open(port)
    await start.wait()
    began = time.perf_counter()
    try:
        response = await asyncio.wait_for(connection.request("GET", path), within)
        status = response.status
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        status = 0  # no answer within the client's timeout, or the connection broke
    finally:
        await connection.close()
    return status, time.perf_counter() - began


async def burst(port: int, path: str, count: int, within: float) -> dict:
    """Open ``count`` connections, then send one request on each at the same instant."""
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one(port, path, within, start)) for _ in range(count)]
    await asyncio.sleep(0.2)  # let every connection be accepted first
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks)
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = [seconds * 1e3 for _, seconds in results]
    return {
        "count": count,
        "ok": sum(1 for status, _ in results if status == 200),
        "statuses": statuses,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "wall_s": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["throughput", "burst"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endpoint", choices=["read", "write", "list"], default="read")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--path", default="/items/1")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.mode == "throughput":
        result = asyncio.run(
            throughput(args.port, args.endpoint, args.rows, args.seconds, args.connections)
        )
    else:
        result = asyncio.run(burst(args.port, args.path, args.count, args.timeout))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
