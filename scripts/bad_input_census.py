"""Run the bad-input catalogue of tests/test_bad_input.py and say what each mistake produced.

Usage: ``python scripts/bad_input_census.py [-v]`` from the repository root.

For every row: the ``early`` step (construction, the call, decoration, startup, first request)
and, when it raised nothing, the ``late`` step a user would do next. Outcomes: ``ours early``
(a fastapi_dbsession error at the row's stage: what the test requires), ``ours late``, ``raw``
(any other exception: the class is counted), ``accepted`` (nothing raised at all).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_bad_input import CASES

from fastapi_dbsession import DBSessionError


def outcome(case: object) -> str:
    try:
        value = case.early()  # type: ignore[attr-defined]
    except DBSessionError as exc:
        return "ours early" if re.search(case.match, str(exc)) else "ours early (other message)"  # type: ignore[attr-defined]
    except BaseException as exc:
        return f"raw {type(exc).__name__} (early)"
    if case.late is None:  # type: ignore[attr-defined]
        return "accepted"
    try:
        case.late(value)  # type: ignore[attr-defined]
    except DBSessionError:
        return "ours late"
    except BaseException as exc:
        return f"raw {type(exc).__name__} (late)"
    return "accepted"


def main() -> None:
    warnings.simplefilter("ignore")
    sys.setrecursionlimit(300)  # max_overflow=-5 recursed until the default limit
    outcomes = {case.id: outcome(case) for case in CASES}
    counts = Counter("raw" if result.startswith("raw") else result for result in outcomes.values())
    print(f"{len(CASES)} bad inputs: {dict(counts)}")
    for case_id, result in outcomes.items():
        if result != "ours early" or "-v" in sys.argv:
            print(f"  {case_id}: {result}")


if __name__ == "__main__":
    main()
