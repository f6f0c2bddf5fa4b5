"""benchmarks/isolation_cost.py runs (tiny sizes): a measurement script must not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SERVERS, Backend

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend", [SERVERS["postgresql"]], indirect=True)
@pytest.mark.timeout(360)  # the script runs in a subprocess bounded at 300 s
def test_isolation_cost_script_runs(backend: Backend) -> None:
    url = backend.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/isolation_cost.py",
            "--tests",
            "4",
            "--small",
            "2",
            "--rounds",
            "1",
            "--url",
            url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rollback isolation (db_isolation)" in result.stdout
    assert "recreate schema per test" in result.stdout
