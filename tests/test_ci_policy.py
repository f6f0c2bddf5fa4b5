"""A database test that cannot reach its server fails under CI=true and skips elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/test_transactions.py::test_transaction_commits_on_success[postgresql]"


def _run(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["FDBS_TEST_POSTGRES_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # closed
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", TARGET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.timeout(240)  # a whole pytest subprocess, itself bounded at 120 s
@pytest.mark.parametrize(
    ("ci", "exit_code", "said"),
    [
        ("true", 1, "CI=true: postgresql is not reachable"),
        (None, 0, "to run these tests, start PostgreSQL"),
    ],
)
def test_unreachable_server(ci: str | None, exit_code: int, said: str) -> None:
    result = _run(ci)

    assert result.returncode == exit_code, result.stdout + result.stderr
    assert said in result.stdout
