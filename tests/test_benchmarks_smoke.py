"""Run benchmarks/run.py in --quick mode so that the benchmark cannot rot (not a timed test).

It serves the hand-written apps, fastapi_dbsession's and the asyncpg floor from this interpreter
through real uvicorn servers, with every correctness check on, and asserts on answers and
committed rows, never on speed. The peers' venvs are left out (they take minutes to build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
IMPLS = ("handwritten-sync", "dbsession-sync", "handwritten-async", "dbsession-async")
IMPLS += ("handwritten-commit-sync", "handwritten-commit-async", "asyncpg-floor")
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


@pytest.mark.postgresql
def test_quick_benchmark_checks_every_answer_and_row(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--use-current-python",
            "--strict",
            f"--only={','.join(IMPLS)}",
            f"--results-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=_bench_env(),
        timeout=240,
        check=False,
    )
    if completed.returncode == EXIT_NO_DATABASE:
        message = f"PostgreSQL is not reachable for the benchmark: {completed.stdout.strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    output = completed.stdout[-4000:] + completed.stderr[-4000:]
    assert completed.returncode == 0, output

    results = json.loads((tmp_path / "latest.json").read_text())
    assert set(results["correctness"]) == set(IMPLS)
    for impl in IMPLS:
        assert results["correctness"][impl]["problems"] == [], impl
        for endpoint in ("read", "write", "list"):
            (run,) = results["throughput"][impl][endpoint]
            assert run["problem"] is None, (impl, endpoint, run)
            assert run["ok"] > 0
            assert run["errors"] == 0
        write = results["throughput"][impl]["write"][0]
        assert write["ok"] <= write["committed"] <= write["sent"]
    for impl in ("dbsession-sync", "dbsession-async"):
        assert results["starvation"][impl]["ok"] == 100, results["starvation"][impl]
    runs = results["cpu"]["runs"]
    assert {"dbsession-sync", "dbsession-async"} <= set(runs)
    assert (tmp_path / "latest.md").read_text().count("INVALID") == 0
