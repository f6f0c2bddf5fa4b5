"""Benchmark fastapi_dbsession against the tutorial pattern, hand-written references, the peer
libraries and a floor.

    python3 benchmarks/run.py            # full run (~50 min on 2 cores), see benchmarks/README.md
    python3 benchmarks/run.py --quick    # a second or two per app, correctness checks on

Five scenarios: (0) round trips per request: each app alone under driver_calls.py, its driver
calls and the server's transactions counted; (1) throughput and latency of real uvicorn servers
(CPU 0) under wrk (CPU 1), implementations interleaved round by round; (2) pool starvation:
pool 3+0, 100 concurrent requests; (3) per-request CPU cost in-process, with a profile;
(4) instructions per request in-process, counted by callgrind (steady under load). Every
ratio and difference is taken against the tutorial pattern as written (``tutorial-sync`` /
``tutorial-async``). It measures the checkout it lives in: .venv-bench-core installs this
repository, editable. Results go to benchmarks/results/ (latest.json, latest.md, profiles).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import envs  # noqa: E402
import instructions  # noqa: E402
import load  # noqa: E402
import report  # noqa: E402

HOST = "127.0.0.1"
ENDPOINTS = ("read", "write", "list")
LIST_LIMIT = 50
SEED_ROWS = 1000  # database.SEED_ROWS; the database module needs psycopg, imported later
MISSING_ID = 987_654_321
EXIT_NO_DATABASE = 3
SCENARIOS = ("roundtrips", "throughput", "starvation", "cpu", "instructions")


@dataclass(frozen=True)
class Impl:
    """One implementation of the three endpoints, served from ``apps/<module>.py``."""

    id: str
    module: str
    env: str
    side: str
    label: str

    @property
    def baseline(self) -> str:
        """The tutorial pattern as written, of the same side: every ratio's denominator."""
        return f"tutorial-{self.side}"


TUTORIAL = "tutorial pattern as written (baseline)"
PINGED = "tutorial get_db + pool_pre_ping=True"
PINGED_SAFE = "tutorial get_db + pool_pre_ping=True, commits before the response"
IMPLS = (
    Impl("tutorial-sync", "tutorial_sync", "core", "sync", TUTORIAL),
    Impl("dbsession-sync", "dbsession_sync", "core", "sync", "fastapi_dbsession"),
    Impl(
        "dbsession-noping-sync",
        "dbsession_noping_sync",
        "core",
        "sync",
        "fastapi_dbsession, pool_pre_ping=False",
    ),
    Impl("handwritten-sync", "handwritten_sync", "core", "sync", PINGED),
    Impl("handwritten-commit-sync", "handwritten_commit_sync", "core", "sync", PINGED_SAFE),
    Impl("fastapi-sqla-sync", "fastapi_sqla_sync", "fastapi-sqla", "sync", "fastapi-sqla"),
    Impl(
        "advanced-alchemy-sync",
        "advanced_alchemy_sync",
        "advanced-alchemy",
        "sync",
        "advanced-alchemy",
    ),
    Impl("tutorial-async", "tutorial_async", "core", "async", TUTORIAL),
    Impl("dbsession-async", "dbsession_async", "core", "async", "fastapi_dbsession"),
    Impl(
        "dbsession-noping-async",
        "dbsession_noping_async",
        "core",
        "async",
        "fastapi_dbsession, pool_pre_ping=False",
    ),
    Impl("handwritten-async", "handwritten_async", "core", "async", PINGED),
    Impl("handwritten-commit-async", "handwritten_commit_async", "core", "async", PINGED_SAFE),
    Impl("fastapi-sqla-async", "fastapi_sqla_async", "fastapi-sqla", "async", "fastapi-sqla"),
    Impl(
        "advanced-alchemy-async",
        "advanced_alchemy_async",
        "advanced-alchemy",
        "async",
        "advanced-alchemy",
    ),
    Impl(
        "fastapi-async-sqlalchemy",
        "fastapi_async_sqlalchemy_app",
        "fastapi-async-sqlalchemy",
        "async",
        "fastapi-async-sqlalchemy",
    ),
    Impl("asyncpg-floor", "asyncpg_floor", "core", "async", "floor: raw asyncpg pool, no ORM"),
)
BY_ID = {impl.id: impl for impl in IMPLS}
NOT_IN_PROCESS = ("asyncpg-floor",)  # the in-process scenario measures every SQLAlchemy app


@dataclass
class Options:
    """What to run, from the command line."""

    quick: bool
    impls: list[Impl]
    rounds: int
    seconds: int
    warmup: float
    connections: int
    loader: str
    scenarios: tuple[str, ...]
    starvation_timeout: float
    cpu_requests: int
    cpu_rounds: int
    instruction_requests: int
    instruction_rounds: int
    roundtrip_requests: int
    results: Path
    strict: bool
    update_readme: bool
    pin: bool
    pythons: dict[str, str] = field(default_factory=dict)


def say(message: str) -> None:
    print(message, flush=True)


# -- processes ---------------------------------------------------------------------------


def pinned(cpu: int, options: Options) -> list[str]:
    """``taskset -c CPU`` when pinning is possible, else nothing."""
    return ["taskset", "-c", str(cpu)] if options.pin else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """One request with the standard library (checks and readiness, never timed)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")
    finally:
        connection.close()


class ServerFailed(RuntimeError):
    """The app did not start (import error, lifespan failure, ...)."""


@dataclass(frozen=True)
class Running:
    """A started server: where it listens and its process id (taskset execs uvicorn)."""

    port: int
    pid: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(
    impl: Impl, options: Options, env: dict[str, str], tag: str, target: str | None = None
) -> Iterator[Running]:
    """Run ``impl`` under uvicorn (one worker, CPU 0) and yield it once it answers.

    ``target`` is the ASGI app uvicorn serves, ``apps.<module>:app`` unless given.
    """
    port = free_port()
    logs = options.results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{impl.id}-{tag}.log"
    command = [
        *pinned(0, options),
        options.pythons[impl.env],
        "-m",
        "uvicorn",
        target or f"apps.{impl.module}:app",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(process, port, log_path)
        yield Running(port, process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:])
            raise ServerFailed(f"uvicorn exited with {process.returncode}:\n{tail}")
        try:
            status, _ = call(port, "GET", "/items/1")
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return
        raise ServerFailed(f"GET /items/1 answered {status} at startup (see {log_path})")
    raise ServerFailed(f"no answer on port {port} within 60 s (see {log_path})")


# -- correctness -------------------------------------------------------------------------


def check_answers(port: int, inspector: Any, tag: str) -> tuple[list[str], list[str]]:
    """Return (problems, notes): right rows read, row committed, 404 for a missing id."""
    problems: list[str] = []
    notes: list[str] = []
    for item_id in (1, SEED_ROWS):
        status, body = call(port, "GET", f"/items/{item_id}")
        expected = inspector.row(item_id)
        if status != 200 or body != expected:
            problems.append(f"GET /items/{item_id}: {status} {body!r}, expected 200 {expected!r}")
    status, body = call(port, "GET", f"/items/{MISSING_ID}")
    if status != 404:
        problems.append(f"GET /items/{MISSING_ID}: {status}, expected 404")
    status, body = call(port, "GET", "/items")
    expected_rows = inspector.first_rows(LIST_LIMIT)
    if status != 200 or body != expected_rows:
        problems.append(f"GET /items: {status}, not the first {LIST_LIMIT} rows by id")
    name = f"check-{tag}"[:50]
    before = inspector.count()
    status, body = call(port, "POST", "/items", {"name": name, "price": 123})
    item_id = body.get("id") if isinstance(body, dict) else None
    if status != 201 or not isinstance(item_id, int):
        problems.append(f"POST /items: {status} {body!r}, expected 201 with an integer id")
        return problems, notes
    expected_row = {"id": item_id, "name": name, "price": 123}
    if inspector.row(item_id) != expected_row:
        for _ in range(50):  # committed after the response was sent? wait up to 1 s
            time.sleep(0.02)
            if inspector.row(item_id) == expected_row:
                notes.append("commits after the response is sent")
                break
        else:
            problems.append(f"POST /items: row {item_id} not committed (or wrong) after 1 s")
    if inspector.count() != before + 1:
        problems.append(f"POST /items: {inspector.count() - before} rows committed, expected 1")
    return problems, notes


# -- scenario 1: throughput --------------------------------------------------------------


def run_load(options: Options, port: int, endpoint: str, seconds: float) -> dict[str, Any]:
    """Load ``endpoint`` for ``seconds`` from CPU 1; wrk's numbers or load.py's, same shape."""
    if options.loader == "wrk":
        command = [
            *pinned(1, options),
            "wrk",
            "-t1",
            f"-c{options.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH_DIR / "bench.lua"),
            f"http://{HOST}:{port}",
        ]
        env = {**os.environ, "BENCH_ENDPOINT": endpoint, "BENCH_ROWS": str(SEED_ROWS)}
        marker = "BENCH_JSON "
    else:
        command = [
            *pinned(1, options),
            sys.executable,
            str(BENCH_DIR / "load.py"),
            "throughput",
            f"--port={port}",
            f"--endpoint={endpoint}",
            f"--rows={SEED_ROWS}",
            f"--seconds={seconds}",
            f"--connections={options.connections}",
        ]
        env = dict(os.environ)
        marker = "{"
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 120, check=False
    )
    for line in result.stdout.splitlines():
        if line.startswith(marker):
            data: dict[str, Any] = json.loads(line[len(marker) :] if marker != "{" else line)
            return data
    raise RuntimeError(
        f"{command[0]} gave no result: {result.stdout[-500:]} {result.stderr[-500:]}"
    )


def measure(options: Options, server: Running, endpoint: str, inspector: Any) -> dict[str, Any]:
    """One timed run: throughput, p50, p99, server CPU per request, errors, committed rows."""
    before = inspector.count()
    cpu_before = cpu_seconds(server.pid)
    raw = run_load(options, server.port, endpoint, options.seconds)
    cpu_used = cpu_seconds(server.pid) - cpu_before
    seconds = raw["duration_us"] / 1e6
    run: dict[str, Any] = {
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "cpu_us": cpu_used / raw["requests"] * 1e6 if raw["requests"] else 0.0,
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "ok": raw["ok"],
        "errors": raw["bad"] + raw["socket_errors"],
        "sent": raw["sent"],
    }
    problems = []
    if run["errors"]:
        problems.append(f"{raw['bad']} non-2xx answers, {raw['socket_errors']} socket errors")
    if raw["ok"] == 0:
        problems.append("no successful request")
    if endpoint == "write":
        time.sleep(0.5)  # let requests that were in flight when the load stopped finish
        committed = inspector.count() - before
        run["committed"] = committed
        # wrk abandons the requests in flight when its time is up: the server may still
        # commit them, so committed rows lie between the 2xx answers and what was sent.
        if not raw["ok"] <= committed <= raw["sent"] - raw["bad"]:
            problems.append(
                f"{committed} rows committed for {raw['ok']} successful writes ({raw['sent']} sent)"
            )
    run["problem"] = "; ".join(problems) or None
    return run


def throughput_scenario(
    options: Options, server: Any, database: str, inspector: Any, results: dict[str, Any]
) -> None:
    """Each round: start every implementation, check its answers and warm it up; then, endpoint
    by endpoint, load the implementations one after another (A B C … for read, A B C … for
    write, …; the order reversed every other round). Paired runs are seconds apart, so drift in
    what else the machine does weighs on both sides of a ratio alike."""
    env = server.env(database)
    correctness: dict[str, Any] = results["correctness"]
    runs: dict[str, Any] = results["throughput"]
    for impl in options.impls:
        correctness[impl.id] = {"problems": [], "notes": []}
        runs[impl.id] = {endpoint: [] for endpoint in ENDPOINTS}
    for round_number in range(1, options.rounds + 1):
        say(f"round {round_number}/{options.rounds}")
        started = time.monotonic()
        order = list(options.impls) if round_number % 2 else list(reversed(options.impls))
        with contextlib.ExitStack() as servers:
            running: dict[str, Running] = {}
            for impl in order:
                entry = correctness[impl.id]
                started_impl = _start_checked(
                    impl,
                    options,
                    env,
                    inspector,
                    entry=entry,
                    round_number=round_number,
                    servers=servers,
                )
                if started_impl is not None:
                    running[impl.id] = started_impl
            for endpoint in ENDPOINTS:
                inspector.vacuum()
                for impl in order:
                    if impl.id not in running:
                        runs[impl.id][endpoint].append({"problem": "did not run"})
                        continue
                    try:
                        run = measure(options, running[impl.id], endpoint, inspector)
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                        run = {"problem": f"did not run: {exc}"[:300]}
                        correctness[impl.id]["problems"].append(f"round {round_number}: {exc}")
                    runs[impl.id][endpoint].append(run)
        for impl in options.impls:
            summary = ", ".join(
                f"{endpoint} {runs[impl.id][endpoint][-1].get('rps', 0):.0f}/s"
                for endpoint in ENDPOINTS
            )
            say(f"  {impl.id:<26} {summary}")
        say(f"  ({time.monotonic() - started:.0f} s)")


def _start_checked(
    impl: Impl,
    options: Options,
    env: dict[str, str],
    inspector: Any,
    *,
    entry: dict[str, Any],
    round_number: int,
    servers: contextlib.ExitStack,
) -> Running | None:
    """Start ``impl`` for this round, check its answers (into ``entry``) and warm it up.

    Returns None, with the reason in ``entry["problems"]``, if it could not serve.
    """
    try:
        running = servers.enter_context(serve(impl, options, env, f"round{round_number}"))
        problems, notes = check_answers(running.port, inspector, f"{impl.id}-{round_number}")
        for endpoint in ENDPOINTS if options.warmup else ():
            run_load(options, running.port, endpoint, options.warmup)
    except (ServerFailed, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        entry["problems"].append(f"round {round_number}: {exc}")
        return None
    entry["problems"] += [f"round {round_number}: {problem}" for problem in problems]
    entry["notes"] = sorted(set(entry["notes"]) | set(notes))
    return running


# -- scenario 2: pool starvation ---------------------------------------------------------


def starvation_scenario(
    options: Options, server: Any, database: str, inspector: Any, results: dict[str, Any]
) -> None:
    env = {
        **server.env(database),
        "BENCH_POOL_SIZE": "3",
        "BENCH_MAX_OVERFLOW": "0",
        "BENCH_POOL_TIMEOUT": f"{options.starvation_timeout:g}",
    }
    say(f"pool starvation: pool 3+0, pool_timeout {options.starvation_timeout:g} s, 100 requests")
    for impl in options.impls:
        try:
            with serve(impl, options, env, "starvation") as running:
                port = running.port
                command = [
                    *pinned(1, options),
                    sys.executable,
                    str(BENCH_DIR / "load.py"),
                    "burst",
                    f"--port={port}",
                    "--path=/items/42",
                    "--count=100",
                    "--timeout=60",
                ]
                output = subprocess.run(
                    command, capture_output=True, text=True, timeout=180, check=True
                ).stdout
                burst: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
                status, _ = call(port, "GET", "/items/42")
                burst["recovered"] = status == 200
        except (ServerFailed, OSError, ValueError, subprocess.SubprocessError) as exc:
            burst = {"problem": f"did not run: {exc}"[:300]}
        results["starvation"][impl.id] = burst
        say(
            f"  {impl.id:<26} {burst.get('ok', 0)}/100 ok, p99 {burst.get('p99_ms', 0):.0f} ms"
            f"  statuses {burst.get('statuses', burst.get('problem'))}"
        )


# -- scenario 3: CPU cost in-process -----------------------------------------------------


PROFILED = ("tutorial-sync", "dbsession-sync", "tutorial-async", "dbsession-async")


def cpu_groups(impls: list[Impl]) -> dict[str, list[Impl]]:
    """The apps of each in-process run: the core venv's, then each peer beside the tutorial
    pattern of its side, in the peer's venv (a difference is only ever taken in one process)."""
    groups: dict[str, list[Impl]] = {}
    for impl in impls:
        if impl.id not in NOT_IN_PROCESS:
            groups.setdefault(impl.env, []).append(impl)
    for env, members in groups.items():
        if env != "core":
            baselines = [BY_ID[f"tutorial-{side}"] for side in ("sync", "async")]
            sides = {impl.side for impl in members}
            groups[env] = [impl for impl in baselines if impl.side in sides] + members
    return groups


def cpu_scenario(options: Options, server: Any, database: str, results: dict[str, Any]) -> None:
    for env, impls in cpu_groups(options.impls).items():
        say(
            f"per-request CPU cost in-process ({env} venv): {options.cpu_rounds} rounds x "
            f"{options.cpu_requests}, {', '.join(impl.id for impl in impls)}"
        )
        command = [
            *pinned(0, options),
            options.pythons[env],
            str(BENCH_DIR / "cpu_cost.py"),
            f"--apps={','.join(f'{impl.id}={impl.module}' for impl in impls)}",
            f"--requests={options.cpu_requests}",
            f"--rounds={options.cpu_rounds}",
            f"--profile-dir={options.results}",
            f"--profile={','.join(PROFILED) if env == 'core' else ''}",
            f"--profile-requests={options.cpu_requests if options.quick else 1500}",
        ]
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, **server.env(database)},
            timeout=3600,
            check=False,
        )
        if completed.returncode != 0:
            results["cpu"][env] = {"problem": completed.stderr[-2000:]}
            say(f"  failed: {completed.stderr[-2000:]}")
            continue
        results["cpu"][env] = json.loads(completed.stdout.strip().splitlines()[-1])


# -- scenario 4: round trips per request -------------------------------------------------


class Client:
    """Sequential requests over one keep-alive connection (the round-trip scenario)."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection(HOST, port, timeout=30)

    def close(self) -> None:
        self._connection.close()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        headers = {} if body is None else {"Content-Type": "application/json"}
        self._connection.request(method, path, body=body, headers=headers)
        response = self._connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def endpoint(self, endpoint: str, count: int) -> int:
        """``count`` requests of ``endpoint`` as the load generator makes them; non-2xx count."""
        bad = 0
        for _ in range(count):
            status, _ = self.request(*load.request_for(endpoint, SEED_ROWS))
            bad += not 200 <= status < 300
        return bad

    def driver_calls(self, since: int = 0) -> tuple[int, list[str], int]:
        """Once the count stops moving (work after the response ends): the count, the names of
        the calls from the ``since``-th on, and how many connections the drivers have opened."""
        previous = -1
        for _ in range(100):
            status, body = self.request("GET", f"/__bench/driver-calls?since={since}")
            if status != 200:
                raise RuntimeError(f"/__bench/driver-calls answered {status}")
            if body["count"] == previous:
                return int(body["count"]), list(body["calls"]), int(body["connects"])
            previous = body["count"]
            time.sleep(0.05)
        raise RuntimeError("the driver kept sending statements for 5 s after the last request")

    def flush_statistics(self) -> int:
        """Flush the server's statistics of every connection the app holds; how many it held."""
        for _ in range(100):
            status, body = self.request("POST", "/__bench/flush-statistics")
            if status != 200:
                raise RuntimeError(f"flushing statistics: {status} {body}")
            if "flushed" in body:
                return int(body["flushed"])
            time.sleep(0.05)
        raise RuntimeError(f"connections still in a transaction after 5 s: {body}")


WARMUP = 50  # requests per endpoint before counting: pools grown, statements prepared


def count_round_trips(
    client: Client, inspector: Any, endpoint: str, requests: int
) -> dict[str, Any]:
    """Per request of ``endpoint``: server transactions and driver calls, and one request's calls.

    The app has been warmed up: its connections are open and its statements prepared.
    """
    count, _, _ = client.driver_calls()
    bad = client.endpoint(endpoint, 1)
    before_calls, trace, before_connects = client.driver_calls(since=count)
    client.flush_statistics()
    before_xacts = inspector.transactions()
    bad += client.endpoint(endpoint, requests)
    after_calls, window, after_connects = client.driver_calls(since=before_calls)
    flushes = client.flush_statistics()  # one transaction each, not the app's
    after_xacts = inspector.transactions()
    xacts = None
    if before_xacts is not None and after_xacts is not None:
        xacts = (after_xacts - before_xacts - flushes) / requests
    return {
        "requests": requests,
        "xacts": xacts,
        "calls": (after_calls - before_calls) / requests,
        "trace": trace,
        "by_statement": {name: n / requests for name, n in sorted(Counter(window).items())},
        "connects": after_connects - before_connects,
        "bad": bad,
        "problem": f"{bad} non-2xx answers" if bad else None,
    }


def roundtrip_scenario(
    options: Options, server: Any, database: str, inspector: Any, results: dict[str, Any]
) -> None:
    """Each implementation alone, under ``driver_calls.py``: sequential requests, counted."""
    requests = options.roundtrip_requests
    say(f"round trips per request: {requests} sequential requests per endpoint")
    for impl in options.impls:
        env = {**server.env(database), "BENCH_COUNTED_APP": f"apps.{impl.module}:app"}
        entry: dict[str, Any] = {}
        try:
            with serve(impl, options, env, "roundtrips", target="driver_calls:app") as running:
                client = Client(running.port)
                try:
                    for endpoint in ENDPOINTS:
                        client.endpoint(endpoint, WARMUP)  # connections, statements, caches
                        inspector.vacuum()
                        entry[endpoint] = count_round_trips(client, inspector, endpoint, requests)
                finally:
                    client.close()
        except (ServerFailed, RuntimeError, OSError, ValueError, KeyError) as exc:
            entry = {endpoint: {"problem": f"did not run: {exc}"[:300]} for endpoint in ENDPOINTS}
        results["roundtrips"][impl.id] = entry
        summary = ", ".join(
            f"{endpoint} {_per_request(entry[endpoint].get('xacts'))} xact "
            f"{_per_request(entry[endpoint].get('calls'))} calls"
            for endpoint in ENDPOINTS
        )
        say(f"  {impl.id:<26} {summary}")


def _per_request(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- setup -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a second or two per app")
    parser.add_argument("--only", help="comma-separated implementation ids (default: all)")
    parser.add_argument("--rounds", type=int, help="rounds of scenario 1 (default 5, quick 1)")
    parser.add_argument("--seconds", type=int, help="timed seconds per endpoint (5, quick 1)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"which scenarios to run (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--roundtrip-requests", type=int, help="requests per endpoint when counting (200)"
    )
    parser.add_argument("--cpu-requests", type=int, help="requests per endpoint and round")
    parser.add_argument("--results-dir", type=Path, help="where results go")
    parser.add_argument(
        "--use-current-python",
        action="store_true",
        help="serve our library, the hand-written apps and the floor from this interpreter "
        "instead of .venv-bench-core (it needs fastapi-dbsession[postgres] and uvicorn)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if any app is INVALID")
    parser.add_argument(
        "--update-readme", action="store_true", help="write the tables into benchmarks/README.md"
    )
    parser.add_argument("--list", action="store_true", help="list implementation ids and exit")
    return parser.parse_args(argv)


def make_options(args: argparse.Namespace) -> Options:
    ids = [name.strip() for name in args.only.split(",")] if args.only else list(BY_ID)
    unknown = [name for name in ids if name not in BY_ID]
    if unknown:
        raise SystemExit(f"unknown implementation(s) {unknown}; known: {', '.join(BY_ID)}")
    for name in list(ids):  # ratios need the baseline of each side measured in the same run
        baseline = BY_ID[name].baseline
        if baseline not in ids:
            ids.insert(0, baseline)
    loader = args.loader
    if loader == "auto":
        loader = "wrk" if shutil.which("wrk") else "python"
    if loader == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk (or --loader python)")
    quick = args.quick
    results = args.results_dir or (BENCH_DIR / "results" / ("quick" if quick else ""))
    return Options(
        quick=quick,
        impls=[impl for impl in IMPLS if impl.id in ids],
        rounds=args.rounds or (1 if quick else 5),
        seconds=args.seconds or (1 if quick else 5),
        warmup=0.0 if quick else 1.0,
        connections=args.connections,
        loader=loader,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()),
        starvation_timeout=2.0 if quick else 5.0,
        cpu_requests=args.cpu_requests or (100 if quick else 600),
        cpu_rounds=1 if quick else 15,
        instruction_requests=10 if quick else 100,
        instruction_rounds=1 if quick else 3,
        roundtrip_requests=args.roundtrip_requests or (50 if quick else 200),
        results=results.resolve(),
        strict=args.strict,
        update_readme=args.update_readme,
        pin=bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2,
    )


def bootstrap(args: argparse.Namespace, argv: list[str]) -> None:
    """Re-run this script inside .venv-bench-core (created on first use) unless asked not to."""
    if args.use_current_python or Path(sys.prefix).resolve() == envs.CORE.path.resolve():
        return
    say(f"using {envs.CORE.path.name} (created on first use)")
    python = envs.ensure(envs.CORE, {}, say=say)
    os.execv(python, [str(python), str(Path(__file__).resolve()), *argv])


def prepare_envs(options: Options, results: dict[str, Any]) -> None:
    options.pythons["core"] = sys.executable
    core_versions = envs.versions(sys.executable)
    results["meta"]["versions"] = {"core": core_versions}
    pins = envs.stack_pins(core_versions)
    for name in sorted({impl.env for impl in options.impls} - {"core"}):
        python = envs.ensure(envs.PEERS[name], pins, say=say)
        options.pythons[name] = str(python)
        results["meta"]["versions"][name] = envs.versions(python)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        for impl in IMPLS:
            say(f"{impl.id:<26} {impl.side:<5} venv {impl.env:<25} {impl.label}")
        return 0
    bootstrap(args, argv)
    options = make_options(args)
    import database  # psycopg lives in the core venv

    server = database.Server()
    reason = database.reachable(server)
    if reason is not None:
        say(f"PostgreSQL at {server.host}:{server.port} is unreachable: {reason}")
        return EXIT_NO_DATABASE
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": options.quick,
            "machine": machine(),
            "loader": options.loader,
            "pinned": options.pin,
            "connections": options.connections,
            "rounds": options.rounds,
            "seconds": options.seconds,
            "starvation_pool_timeout": options.starvation_timeout,
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "impls": {impl.id: {"label": impl.label, "side": impl.side} for impl in options.impls},
        },
        "correctness": {},
        "roundtrips": {},
        "throughput": {},
        "starvation": {},
        "cpu": {},
        "instructions": {},
    }
    say(f"loader: {options.loader}; pinning: {'taskset' if options.pin else 'none'}")
    prepare_envs(options, results)
    results["meta"]["library"] = envs.library_origin(sys.executable)
    say(f"fastapi_dbsession: {results['meta']['library']}")
    options.results.mkdir(parents=True, exist_ok=True)
    with database.bench_database(server) as name:
        inspector = database.Inspector(server, name)
        results["meta"]["postgresql"] = inspector.server_version()
        try:
            if "roundtrips" in options.scenarios:
                roundtrip_scenario(options, server, name, inspector, results)
            if "throughput" in options.scenarios:
                throughput_scenario(options, server, name, inspector, results)
            if "starvation" in options.scenarios:
                starvation_scenario(options, server, name, inspector, results)
            if "cpu" in options.scenarios:
                inspector.vacuum()
                cpu_scenario(options, server, name, results)
            if "instructions" in options.scenarios:
                inspector.vacuum()
                core = cpu_groups(options.impls).get("core", [])
                results["instructions"] = instructions.scenario(
                    [(impl.id, impl.module) for impl in core],
                    python=options.pythons["core"],
                    env=server.env(name),
                    results_dir=options.results,
                    requests=options.instruction_requests,
                    rounds=options.instruction_rounds,
                    say=say,
                )
        finally:
            inspector.close()
    results["meta"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    (options.results / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.render(results)
    (options.results / "latest.md").write_text(markdown)
    say("")
    say(markdown)
    if options.update_readme:
        report.update_readme(BENCH_DIR / "README.md", markdown)
    invalid = report.invalid(results)
    if invalid:
        say(f"INVALID: {', '.join(invalid)}")
        return 1 if options.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
