"""Run benchmarks/run.py in --quick mode so that the benchmark cannot rot (not a timed test).

It serves the tutorial pattern (the baseline), the hand-written references, fastapi_dbsession's
apps and the asyncpg floor from this interpreter through real uvicorn servers, with every
correctness check on, counts their round trips, and asserts on answers, committed rows and
plausible round-trip counts, never on speed. The peers' venvs are left out (they take minutes
to build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
IMPLS = ("tutorial-sync", "dbsession-sync", "tutorial-async", "dbsession-async")
IMPLS += ("handwritten-sync", "handwritten-async", "handwritten-commit-sync")
IMPLS += ("handwritten-commit-async", "asyncpg-floor")
ENDPOINTS = ("read", "write", "list")
QUICK_ROUNDTRIP_REQUESTS = 50  # run.py's --quick default
EXIT_NO_DATABASE = 3  # run.py's exit code when PostgreSQL does not answer
POSTGRES_URL = os.environ.get(
    "FDBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _bench_env() -> dict[str, str]:
    url = make_url(POSTGRES_URL)
    return {
        **os.environ,
        "BENCH_PG_HOST": url.host or "127.0.0.1",
        "BENCH_PG_PORT": str(url.port or 5432),
        "BENCH_PG_USER": url.username or "postgres",
    }


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results directory of one ``run.py --quick --strict`` over IMPLS, every scenario but
    the callgrind one (see ``counted_results``)."""
    return _quick_run(tmp_path_factory, IMPLS, "roundtrips,throughput,starvation,cpu")


@pytest.fixture(scope="module")
def counted_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The callgrind scenario alone, on one side (Python under valgrind is slow)."""
    return _quick_run(tmp_path_factory, ("tutorial-async", "dbsession-async"), "instructions")


def _quick_run(factory: pytest.TempPathFactory, impls: tuple[str, ...], scenarios: str) -> Path:
    results = factory.mktemp("bench-quick")
    completed = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--use-current-python",
            "--strict",
            f"--only={','.join(impls)}",
            f"--scenarios={scenarios}",
            f"--results-dir={results}",
        ],
        capture_output=True,
        text=True,
        env=_bench_env(),
        timeout=900,
        check=False,
    )
    if completed.returncode == EXIT_NO_DATABASE:
        message = f"PostgreSQL is not reachable for the benchmark: {completed.stdout.strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    output = completed.stdout[-4000:] + completed.stderr[-4000:]
    assert completed.returncode == 0, output
    return results


def _load(results: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / "latest.json").read_text())
    return data


@pytest.mark.postgresql
@pytest.mark.timeout(960)  # the first one runs the module fixture: run.py --quick, <= 900 s
def test_quick_benchmark_checks_every_answer_and_row(quick_results: Path) -> None:
    results = _load(quick_results)
    assert set(results["correctness"]) == set(IMPLS)
    for impl in IMPLS:
        assert results["correctness"][impl]["problems"] == [], impl
        for endpoint in ENDPOINTS:
            (run,) = results["throughput"][impl][endpoint]
            assert run["problem"] is None, (impl, endpoint, run)
            assert run["ok"] > 0
            assert run["errors"] == 0
        write = results["throughput"][impl]["write"][0]
        assert write["ok"] <= write["committed"] <= write["sent"]
    for impl in ("dbsession-sync", "dbsession-async"):
        assert results["starvation"][impl]["ok"] == 100, results["starvation"][impl]
    runs = results["cpu"]["core"]["runs"]
    assert {"tutorial-sync", "dbsession-sync", "tutorial-async", "dbsession-async"} <= set(runs)
    markdown = (quick_results / "latest.md").read_text()
    assert markdown.count("INVALID") == 0
    assert "#### Round trips per request" in markdown


@pytest.mark.postgresql
@pytest.mark.timeout(960)  # the first one runs the module fixture: run.py --quick, <= 900 s
def test_quick_benchmark_counts_round_trips(quick_results: Path) -> None:
    """Both counts for every implementation and endpoint, in a plausible range; the tutorial
    pattern's are known: BEGIN, the query, ROLLBACK or COMMIT, one transaction (a connection
    its pool opens while counting adds its start-up transaction)."""
    trips = _load(quick_results)["roundtrips"]
    assert set(trips) == set(IMPLS)
    for impl in IMPLS:
        for endpoint in ENDPOINTS:
            count = trips[impl][endpoint]
            assert count["problem"] is None, (impl, endpoint, count)
            assert count["requests"] == QUICK_ROUNDTRIP_REQUESTS
            assert 0.9 <= count["xacts"] <= 4.5, (impl, endpoint, count)
            assert 0.9 <= count["calls"] <= 12, (impl, endpoint, count)
            assert count["trace"], (impl, endpoint)
    for side in ("sync", "async"):
        tutorial = trips[f"tutorial-{side}"]
        assert tutorial["read"]["trace"] == ["BEGIN", "SELECT", "ROLLBACK"]
        assert tutorial["write"]["trace"] == ["BEGIN", "INSERT", "COMMIT"]
        for endpoint in ENDPOINTS:
            count = tutorial[endpoint]
            assert 2.9 <= count["calls"] <= 3.3, (side, endpoint, count)
            started = count["connects"] / QUICK_ROUNDTRIP_REQUESTS
            assert count["xacts"] <= 1.0 + started + 0.1, (side, endpoint, count)


@pytest.mark.postgresql
@pytest.mark.timeout(960)  # the first one runs the module fixture: run.py --quick, <= 900 s
def test_quick_benchmark_counts_instructions(counted_results: Path) -> None:
    """Under callgrind every measured batch is dumped: a count per app and endpoint, of the
    size a request through FastAPI and SQLAlchemy has (no dump lost, no dump mislabelled)."""
    counted = _load(counted_results)["instructions"]
    if counted.get("problem", "").startswith("valgrind"):
        pytest.skip(f"{counted['problem']}: the callgrind scenario cannot run here")
    assert "problem" not in counted, counted
    for impl in ("tutorial-async", "dbsession-async"):
        for endpoint in (*ENDPOINTS, "noop"):
            (per_request,) = counted["runs"][impl][endpoint]
            assert 1e5 < per_request < 1e8, (impl, endpoint, per_request)
    markdown = (counted_results / "latest.md").read_text()
    assert "#### Instructions per request (in-process, callgrind)" in markdown
