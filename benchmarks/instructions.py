"""Scenario 4 of run.py: CPU instructions per request, counted by callgrind (valgrind).

The in-process CPU scenario times requests with ``time.process_time``; on a shared 2-core
machine its noise band is wide (tens of percent), too wide to tell a few µs apart. Instructions
executed do not depend on what else the machine runs: cpu_cost.py runs the core venv's apps
under ``valgrind --tool=callgrind`` with callgrind_shim.c loaded, zeroes the counters before
each measured batch and dumps them after it. This module builds the shim, runs that process,
reads the dumps and renders the table: instructions per request, the difference and the ratio
over the tutorial pattern of the same side, and that difference in µs at the tutorial pattern's
own native µs per instruction when the cpu scenario ran in the same run.

Needs valgrind, its headers and gcc (Debian: ``apt-get install valgrind gcc``); without them the
scenario reports what is missing and the rest of the run goes on.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
HEADER = Path("/usr/include/valgrind/callgrind.h")
LABEL = re.compile(r"^desc: Trigger: Client Request: fdbs\|([^|]+)\|([^|]+)\|(\d+)$")
TOTAL = re.compile(r"^(?:totals|summary): (\d+)")


def missing_tools() -> str | None:
    """What is missing to count instructions, or None."""
    if not shutil.which("valgrind") or not HEADER.exists():
        return "valgrind (and its headers) not installed: apt-get install valgrind"
    if not shutil.which("gcc"):
        return "gcc not installed: apt-get install gcc"
    return None


def build_shim(directory: Path) -> Path:
    target = directory / "callgrind_shim.so"
    source = BENCH_DIR / "callgrind_shim.c"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-o", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    return target


def read_dumps(directory: Path) -> dict[str, dict[str, list[float]]]:
    """{app: {endpoint: [instructions per request, one per round]}} from callgrind's dumps."""
    found: dict[str, dict[str, list[float]]] = {}
    for path in sorted(directory.glob("callgrind.out.*")):
        label = total = None
        with path.open(errors="replace") as lines:
            for line in lines:
                if label is None and (match := LABEL.match(line.rstrip("\n"))):
                    label = match.groups()
                elif match := TOTAL.match(line):
                    total = int(match.group(1))
        if label is None or total is None:
            continue  # the dump at exit, or one of a batch that was not measured
        app, endpoint, count = label
        found.setdefault(app, {}).setdefault(endpoint, []).append(total / int(count))
    return found


def scenario(
    apps: Sequence[tuple[str, str]],
    *,
    python: str,
    env: Mapping[str, str],
    results_dir: Path,
    requests: int,
    rounds: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run ``apps`` ((id, module) pairs) under callgrind; the JSON the report renders."""
    problem = missing_tools()
    if problem:
        say(f"instructions per request: skipped, {problem}")
        return {"problem": problem}
    dumps = results_dir / "callgrind"
    shutil.rmtree(dumps, ignore_errors=True)
    dumps.mkdir(parents=True)
    shim = build_shim(results_dir)
    say(
        f"instructions per request under callgrind: {rounds} rounds x {requests}, "
        f"{', '.join(app for app, _ in apps)}"
    )
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={dumps}/callgrind.out.%p",
        "--dump-line=no",
        python,
        str(BENCH_DIR / "cpu_cost.py"),
        f"--apps={','.join(f'{app}={module}' for app, module in apps)}",
        f"--requests={requests}",
        f"--rounds={rounds}",
        "--profile-requests=0",
        f"--profile-dir={results_dir}",
        f"--callgrind-shim={shim}",
    ]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=7200,
        check=False,
    )
    if completed.returncode != 0:
        say(f"  failed: {completed.stderr[-2000:]}")
        return {"problem": completed.stderr[-2000:]}
    runs = read_dumps(dumps)
    shutil.rmtree(dumps, ignore_errors=True)
    return {"requests": requests, "rounds": rounds, "runs": runs}


def _native_us_per_instruction(results: dict[str, Any], base: str, endpoint: str) -> float | None:
    """The tutorial pattern's own native CPU µs per instruction, from the cpu scenario."""
    cpu_runs = (results.get("cpu") or {}).get("core", {}).get("runs", {}).get(base, {})
    counted = (results.get("instructions") or {}).get("runs", {}).get(base, {}).get(endpoint)
    timed = cpu_runs.get(endpoint)
    if not counted or not timed:
        return None
    return float(statistics.median(run["cpu_us"] for run in timed) / statistics.median(counted))


def overhead(results: dict[str, Any], ours: str, base: str, endpoint: str) -> float | None:
    """Our instructions over the tutorial pattern's, in native µs (None: not measured)."""
    runs = (results.get("instructions") or {}).get("runs", {})
    scale = _native_us_per_instruction(results, base, endpoint)
    mine, theirs = runs.get(ours, {}).get(endpoint), runs.get(base, {}).get(endpoint)
    if not mine or not theirs or scale is None:
        return None
    return float((statistics.median(mine) - statistics.median(theirs)) * scale)


def render(
    results: dict[str, Any], sides: Mapping[str, str], labels: Mapping[str, str]
) -> list[str]:
    """The report's table (markdown lines), or nothing when the scenario did not run."""
    counted = results.get("instructions") or {}
    if not counted:
        return []
    if counted.get("problem"):
        return [f"not measured: {counted['problem'].strip().splitlines()[-1]}", ""]
    runs: dict[str, dict[str, list[float]]] = counted["runs"]
    lines = [
        f"Instructions executed per request in-process (all threads), counted by callgrind: "
        f"median of {counted['rounds']} rounds x {counted['requests']} requests. A count, not "
        "a time: the machine's load does not move it. µs: the difference at the tutorial "
        "pattern's native µs per instruction (cpu scenario of this run).",
        "",
        "| side | endpoint | implementation | instructions / request | over the tutorial "
        "pattern | x base | ≈ µs over |",
        "|---|---|---|---|---|---|---|",
    ]
    for side in ("sync", "async"):
        base = f"tutorial-{side}"
        if base not in runs:
            continue
        for endpoint in ("read", "write", "list", "noop"):
            base_count = statistics.median(runs[base].get(endpoint) or [0])
            scale = _native_us_per_instruction(results, base, endpoint)
            for app, endpoints in runs.items():
                if sides.get(app) != side or endpoint not in endpoints:
                    continue
                count = statistics.median(endpoints[endpoint])
                if app == base:
                    over, ratio, micro = "baseline", "1.00", "-"
                else:
                    over = f"{count - base_count:+,.0f}"
                    ratio = f"{count / base_count:.3f}" if base_count else "-"
                    micro = f"{(count - base_count) * scale:+.1f}" if scale else "-"
                lines.append(
                    f"| {side} | {endpoint} | {labels.get(app, app)} | {count:,.0f} | {over} "
                    f"| {ratio} | {micro} |"
                )
    return [*lines, ""]
