"""Measure per-request CPU cost in-process (raw ASGI calls, no network) and profile where it goes.

Run by run.py, pinned to CPU 0, with BENCH_PG_* set: once in the core venv (our apps, the
tutorial pattern and the references), once in each peer's venv (the peer beside the tutorial
pattern, so that each difference is taken in one process). Every app given with --apps is
imported into this one process and driven one request at a time; the apps are interleaved
round by round.
``time.process_time`` counts every thread of the process (sync endpoints run in the threadpool).
Prints one JSON line; writes pyinstrument profiles to --profile-dir when pyinstrument is there.

With ``--callgrind-shim`` (run.py's ``instructions`` scenario, under ``valgrind
--tool=callgrind``), callgrind's counters are zeroed before each measured batch and dumped after
it with the label ``fdbs|<app>|<endpoint>|<requests>``: instructions executed, every thread,
which the load of a shared machine does not change.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import load  # noqa: E402

ENDPOINTS = ("read", "write", "list", "noop")
SEED_ROWS = 1000
LIBRARY_PATH = "/fastapi_dbsession/"

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def call(app: App, method: str, path: str, body: bytes | None) -> int:
    """One request straight into the ASGI callable; returns the status code."""
    payload = body or b""
    headers = [(b"host", b"bench")]
    if body is not None:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    done = asyncio.Event()
    received = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    return status


def request_for(endpoint: str) -> tuple[str, str, bytes | None]:
    if endpoint == "noop":
        return "GET", "/noop", None
    return load.request_for(endpoint, SEED_ROWS)


class Callgrind:
    """The client requests of callgrind_shim.c, or nothing when no shim is given."""

    def __init__(self, shim: str | None) -> None:
        self.library: Any = None
        if shim:
            import ctypes

            self.library = ctypes.CDLL(shim)
            if not self.library.fdbs_on_valgrind():
                raise SystemExit("--callgrind-shim given, but not running under valgrind")

    def zero(self) -> None:
        if self.library is not None:
            self.library.fdbs_zero()

    def dump(self, label: str | None) -> None:
        if self.library is not None and label is not None:
            self.library.fdbs_dump(label.encode())


CALLGRIND = Callgrind(None)


async def batch(
    app: App, endpoint: str, count: int, label: str | None = None
) -> tuple[float, float, int]:
    """``count`` sequential requests: (CPU µs per request, wall µs per request, non-2xx).

    With a ``label`` under callgrind, the batch's instructions are dumped under that label."""
    gc.collect()
    bad = 0
    CALLGRIND.zero()
    cpu_started, wall_started = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(count):
        method, path, body = request_for(endpoint)
        status = await call(app, method, path, body)
        if not 200 <= status < 300:
            bad += 1
    cpu = (time.process_time_ns() - cpu_started) / count / 1e3
    wall = (time.perf_counter_ns() - wall_started) / count / 1e3
    CALLGRIND.dump(label and f"fdbs|{label}|{endpoint}|{count}")
    return cpu, wall, bad


def library_frames(root: Any, requests: int) -> list[dict[str, Any]]:
    """Sum pyinstrument's samples of our library's functions: self and inclusive µs/request."""
    totals: dict[str, dict[str, float]] = {}

    def walk(frame: Any, inside: set[str]) -> None:
        key = None
        if LIBRARY_PATH in (frame.file_path or ""):
            short = frame.file_path.split(LIBRARY_PATH, 1)[1]
            key = f"{short}:{frame.line_no} {frame.function}"
            entry = totals.setdefault(key, {"self": 0.0, "inclusive": 0.0})
            entry["self"] += frame.total_self_time
            if key not in inside:  # recursion / re-entry counts once
                entry["inclusive"] += frame.time
        for child in frame.children:
            walk(child, inside | {key} if key else inside)

    if root is not None:
        walk(root, set())
    rows = [
        {
            "function": key,
            "self_us": value["self"] / requests * 1e6,
            "inclusive_us": value["inclusive"] / requests * 1e6,
        }
        for key, value in totals.items()
    ]
    return sorted(rows, key=lambda row: -row["inclusive_us"])


def save_profile(profiler: Any, impl_id: str, requests: int, directory: Path) -> dict[str, Any]:
    """Write ``profiler``'s text and HTML reports; return our library's share per request."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"profile-{impl_id}"
    stem.with_suffix(".txt").write_text(
        profiler.output_text(unicode=False, color=False, show_all=False)
    )
    stem.with_suffix(".html").write_text(profiler.output_html())
    session = profiler.last_session
    return {
        "requests": requests,
        "sampled_us_per_request": (session.duration if session else 0) / requests * 1e6,
        "library": library_frames(session.root_frame() if session else None, requests)[:25],
        "files": [stem.with_suffix(".txt").name, stem.with_suffix(".html").name],
    }


async def profile(apps: dict[str, App], requests: int, directory: Path) -> dict[str, Any]:
    """Profile ``requests`` requests per endpoint for each app (main thread, where the
    dependencies and every async endpoint run; sync endpoint bodies run in worker threads)."""
    if not apps:
        return {}
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {"skipped": "pyinstrument is not installed in this interpreter"}
    out: dict[str, Any] = {}
    for impl_id, app in apps.items():
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        for endpoint in ENDPOINTS:
            for _ in range(requests):
                method, path, body = request_for(endpoint)
                await call(app, method, path, body)
        profiler.stop()
        out[impl_id] = save_profile(profiler, impl_id, requests * len(ENDPOINTS), directory)
    return out


async def vacuum() -> None:
    """Drop the rows the writes added and vacuum (asyncpg: every benchmark venv has it)."""
    import asyncpg
    from apps.common import settings

    connection = await asyncpg.connect(settings.dsn)
    try:
        await connection.execute("DELETE FROM items WHERE id > $1", SEED_ROWS)
        await connection.execute("VACUUM ANALYZE items")
    finally:
        await connection.close()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    modules = dict(pair.split("=", 1) for pair in args.apps.split(","))
    apps: dict[str, App] = {
        name: importlib.import_module(f"apps.{module}").app for name, module in modules.items()
    }
    impl_ids = list(apps)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {endpoint: [] for endpoint in ENDPOINTS} for name in impl_ids
    }
    async with AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))  # type: ignore[attr-defined]
        for app in apps.values():  # warm up: connections, statement caches, compiled paths
            for endpoint in ENDPOINTS:
                await batch(app, endpoint, max(20, args.requests // 10))
        for round_number in range(args.rounds):
            await vacuum()
            order = list(apps.items())
            if round_number % 2:  # alternate the order: no app always runs first
                order.reverse()
            for name, app in order:
                for endpoint in ENDPOINTS:
                    cpu, wall, bad = await batch(app, endpoint, args.requests, label=name)
                    runs[name][endpoint].append({"cpu_us": cpu, "wall_us": wall, "bad": bad})
        await vacuum()
        wanted = set(args.profile.split(",")) if args.profile_requests else set()
        profiled = {name: app for name, app in apps.items() if name in wanted}
        profiles = await profile(profiled, args.profile_requests, Path(args.profile_dir))
    return {"requests": args.requests, "rounds": args.rounds, "runs": runs, "profiles": profiles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", required=True, help="id=module,... (modules under apps/)")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile-requests", type=int, default=1500, help="0: no profiles")
    parser.add_argument("--profile-dir", required=True)
    parser.add_argument("--profile", default="", help="ids of the apps to profile (default none)")
    parser.add_argument("--callgrind-shim", help="callgrind_shim.c built: count instructions")
    args = parser.parse_args()
    global CALLGRIND  # noqa: PLW0603  # set once, before anything is measured
    CALLGRIND = Callgrind(args.callgrind_shim)
    random.seed(7)
    try:
        import uvloop
    except ImportError:  # the dev venv: plain asyncio, like uvicorn would use there
        result = asyncio.run(measure(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(measure(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
