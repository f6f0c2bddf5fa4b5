"""benchmarks/observability_cost.py runs (tiny sizes): a measurement script must not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_observability_cost_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/observability_cost.py", "--requests", "3", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for configuration in ("baseline", "off", "record_queries", "prometheus_metrics"):
        assert configuration in result.stdout
    assert "ratio: to baseline" in result.stdout
