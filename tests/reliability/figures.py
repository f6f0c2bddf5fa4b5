"""What the reliability tests measured, printed at the end of the run (and saved as JSON).

Each test calls :func:`record`; the suite's conftest prints every figure in the terminal
summary ("reliability figures"), and writes them to the file named by
``FDBS_RELIABILITY_FIGURES`` when it is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FIGURES: dict[str, dict[str, object]] = {}


def record(name: str, figures: dict[str, object]) -> None:
    """Keep ``figures`` under ``name`` (a scenario and its setup) and print them."""
    FIGURES[name] = figures
    print(f"reliability figures {name}: {json.dumps(figures, sort_keys=True)}")


def lines() -> list[str]:
    return [f"{name}: {json.dumps(FIGURES[name], sort_keys=True)}" for name in sorted(FIGURES)]


def save() -> None:
    path = os.environ.get("FDBS_RELIABILITY_FIGURES")
    if path and FIGURES:
        Path(path).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
