"""Find lines in test sources: the code location a log record must name."""

from __future__ import annotations


def line_of(path: str, marker: str) -> int:
    """The number of the line of ``path`` that ends with the comment ``# <marker>``."""
    with open(path) as source:
        for number, line in enumerate(source, start=1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(f"no line marked {marker!r} in {path}")
