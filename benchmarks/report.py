"""Turn the raw results of run.py into medians, paired ratios, noise bands and Markdown tables."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

ENDPOINTS = ("read", "write", "list")
THROUGHPUT_TARGET = 0.97
P99_TARGET = 1.05
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
STACK = ("fastapi", "starlette", "pydantic", "sqlalchemy", "psycopg", "asyncpg", "uvicorn")
STACK += ("uvloop", "httptools")
LIBRARIES = ("fastapi-dbsession", "fastapi-sqla", "advanced-alchemy", "fastapi-async-sqlalchemy")


def one_line(text: object, limit: int = 160) -> str:
    """Squeeze a problem (maybe a traceback) into one table cell."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    flat = " / ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else "".join(lines)
    flat = flat.replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _valid(run: dict[str, Any]) -> bool:
    return run.get("problem") is None and "rps" in run


def _has(run: dict[str, Any], metric: str) -> bool:
    return _valid(run) and bool(run.get(metric))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> float | None:
    """Largest distance from the median, relative to it (the run's noise band for a metric)."""
    middle = _median(values)
    if not middle or len(values) < 2:
        return None
    return max(abs(value - middle) for value in values) / middle


def cell(
    results: dict[str, Any], impl: str, endpoint: str, baseline: str | None = None
) -> dict[str, Any]:
    """Medians, paired ratios against the baseline of the same rounds, and validity.

    ``baseline`` defaults to the side's hand-written seed pattern.
    """
    meta = results["meta"]["impls"]
    side = meta[impl]["side"]
    baseline = baseline or f"handwritten-{side}"
    runs = results["throughput"].get(impl, {}).get(endpoint, [])
    base_runs = results["throughput"].get(baseline, {}).get(endpoint, [])
    problems = [run["problem"] for run in runs if run.get("problem")]
    problems += results["correctness"].get(impl, {}).get("problems", [])
    good = [run for run in runs if _valid(run)]
    out: dict[str, Any] = {
        "invalid": bool(problems) or not good,
        "problem": problems[0] if problems else (None if good else "no run"),
        "errors": sum(run.get("errors", 0) for run in runs),
        "rounds": len(good),
    }
    for metric in ("rps", "p50_ms", "p99_ms", "cpu_us"):
        values = [run[metric] for run in good if _has(run, metric)]
        out[metric] = _median(values)
        ratios = [
            run[metric] / base[metric]
            for run, base in zip(runs, base_runs, strict=False)
            if _has(run, metric) and _has(base, metric)
        ]
        out[f"{metric}_ratio"] = _median(ratios)
        out[f"{metric}_spread"] = _spread(values)
    return out


def invalid(results: dict[str, Any]) -> list[str]:
    """Ids of every implementation that failed a check, a run, or the starvation scenario."""
    bad = []
    for impl in results["meta"]["impls"]:
        if (
            impl in results["throughput"]
            and any(cell(results, impl, endpoint)["invalid"] for endpoint in ENDPOINTS)
        ) or results["starvation"].get(impl, {}).get("problem"):
            bad.append(impl)
    cpu = results.get("cpu") or {}
    if cpu.get("problem") or any(
        run["bad"]
        for endpoints in cpu.get("runs", {}).values()
        for runs in endpoints.values()
        for run in runs
    ):
        bad.append("cpu scenario")
    return bad


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"±{value * 100:.1f}%"


def _throughput_tables(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    lines = []
    for side in ("sync", "async"):
        impls = [impl for impl, info in meta["impls"].items() if info["side"] == side]
        impls = [impl for impl in impls if impl in results["throughput"]]
        if not impls:
            continue
        lines += [
            f"#### {side}",
            "",
            "| endpoint | implementation | req/s | x base | p50 ms | x base | p99 ms | x base "
            "| server CPU µs/req | x base | errors | notes |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for endpoint in ENDPOINTS:
            for impl in impls:
                c = cell(results, impl, endpoint)
                label = meta["impls"][impl]["label"]
                notes = list(results["correctness"].get(impl, {}).get("notes", []))
                if impl == f"handwritten-{side}":
                    notes.insert(
                        0,
                        f"noise band: req/s {_pct(c['rps_spread'])}, p50 "
                        f"{_pct(c['p50_ms_spread'])}, p99 {_pct(c['p99_ms_spread'])}, CPU "
                        f"{_pct(c['cpu_us_spread'])}",
                    )
                name = f"**INVALID** {label}" if c["invalid"] else label
                if c["invalid"]:
                    notes.insert(0, f"INVALID: {one_line(c['problem'])}")
                lines.append(
                    f"| {endpoint} | {name} | {_fmt(c['rps'], 0)} | {_ratio(c['rps_ratio'])} "
                    f"| {_fmt(c['p50_ms'])} | {_ratio(c['p50_ms_ratio'])} | {_fmt(c['p99_ms'])} "
                    f"| {_ratio(c['p99_ms_ratio'])} | {_fmt(c['cpu_us'], 0)} "
                    f"| {_ratio(c['cpu_us_ratio'])} | {c['errors']} | {'; '.join(notes)} |"
                )
        lines.append("")
    return lines


def _verdict(ratio: float | None, target: float, noise: float | None, higher: bool) -> str:
    if ratio is None:
        return "not measured"
    met = ratio >= target if higher else ratio <= target
    if met:
        return "met"
    tolerance = noise or 0.0
    within = ratio >= target - tolerance if higher else ratio <= target + tolerance
    return "within noise" if within else "**MISSED**"


SAFE_BASELINE = "handwritten-commit"
"""The hand-written ``get_db`` that, like fastapi_dbsession, ends its transaction (commit or
rollback) before the response is sent: the same work in the same order."""


def _targets(results: dict[str, Any]) -> list[str]:
    lines = [
        "| side | endpoint | req/s x base (≥ 0.97) | p99 x base (≤ 1.05) | server CPU/req x base "
        "| ahead of every peer (req/s) | req/s, p99 x hand-written that commits first |",
        "|---|---|---|---|--:|---|---|",
    ]
    meta = results["meta"]["impls"]
    for side in ("sync", "async"):
        ours = f"dbsession-{side}"
        if ours not in results["throughput"]:
            continue
        peers = [
            impl
            for impl, info in meta.items()
            if info["side"] == side
            and impl in results["throughput"]
            and not impl.startswith(("handwritten", "dbsession", "asyncpg"))
        ]
        for endpoint in ENDPOINTS:
            c = cell(results, ours, endpoint)
            base = cell(results, f"handwritten-{side}", endpoint)
            behind = []
            for peer in peers:
                other = cell(results, peer, endpoint)
                if other["invalid"] or c["rps_ratio"] is None or other["rps_ratio"] is None:
                    continue
                if other["rps_ratio"] >= c["rps_ratio"]:
                    behind.append(f"{peer} ({other['rps_ratio']:.3f})")
            rps = _verdict(c["rps_ratio"], THROUGHPUT_TARGET, base["rps_spread"], higher=True)
            p99 = _verdict(c["p99_ms_ratio"], P99_TARGET, base["p99_ms_spread"], higher=False)
            ahead = "yes" if not behind else "**no**: " + ", ".join(behind)
            safe = "-"
            if f"{SAFE_BASELINE}-{side}" in results["throughput"]:
                vs = cell(results, ours, endpoint, baseline=f"{SAFE_BASELINE}-{side}")
                safe = f"{_ratio(vs['rps_ratio'])}, {_ratio(vs['p99_ms_ratio'])}"
            lines.append(
                f"| {side} | {endpoint} | {_ratio(c['rps_ratio'])} {rps} "
                f"| {_ratio(c['p99_ms_ratio'])} {p99} | {_ratio(c['cpu_us_ratio'])} "
                f"| {ahead if peers else '-'} | {safe} |"
            )
    return [*lines, ""]


def _starvation(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    lines = [
        f"Pool 3 + 0 overflow, pool_timeout {meta['starvation_pool_timeout']:g} s for every "
        "implementation (asyncpg: max_size 3, acquire timeout the same), 100 concurrent "
        "`GET /items/42` (response_model) through uvicorn, client timeout 60 s.",
        "",
        "| implementation | side | ok / 100 | other answers | p50 ms | p99 ms | all done in s "
        "| serves after |",
        "|---|---|--:|---|--:|--:|--:|---|",
    ]
    for impl, burst in results["starvation"].items():
        info = meta["impls"][impl]
        if burst.get("problem"):
            problem = one_line(burst["problem"])
            lines.append(f"| **INVALID** {info['label']} | {info['side']} | - | {problem} |||||")
            continue
        others = {k: v for k, v in burst["statuses"].items() if k != "200"}
        shown = ", ".join(f"{v}x {'no answer' if k == '0' else k}" for k, v in others.items())
        lines.append(
            f"| {info['label']} | {info['side']} | {burst['ok']} | {shown or '-'} "
            f"| {burst['p50_ms']:.0f} | {burst['p99_ms']:.0f} | {burst['wall_s']:.1f} "
            f"| {'yes' if burst.get('recovered') else '**no**'} |"
        )
    return [*lines, ""]


def _cpu(results: dict[str, Any]) -> list[str]:
    cpu = results.get("cpu") or {}
    if not cpu:
        return []
    if cpu.get("problem"):
        return [f"**INVALID**: {one_line(cpu['problem'], 400)}", ""]
    runs = cpu["runs"]
    lines = [
        f"{cpu['rounds']} rounds x {cpu['requests']} sequential requests per endpoint, raw ASGI "
        "calls in one process against PostgreSQL (no HTTP, no network). CPU = process time "
        "(all threads) per request; overhead = median over rounds of (ours - hand-written) in "
        "the same round, [min, max]. `noop` takes the session and never uses it: the session "
        "machinery alone, without a round trip.",
        "",
        "| side | endpoint | hand-written CPU µs | fastapi_dbsession CPU µs | overhead µs "
        "| overhead % | wall µs hand-written / ours | overhead µs x hand-written that commits "
        "first |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for side in ("sync", "async"):
        ours, base = f"dbsession-{side}", f"handwritten-{side}"
        if ours not in runs or base not in runs:
            continue
        for endpoint in (*ENDPOINTS, "noop"):
            if endpoint not in runs[ours]:
                continue
            pairs = list(zip(runs[ours][endpoint], runs[base][endpoint], strict=False))
            diffs = _cpu_differences(runs, ours, base, endpoint)
            base_cpu = _median([b["cpu_us"] for _, b in pairs])
            our_cpu = _median([o["cpu_us"] for o, _ in pairs])
            overhead = _median(diffs)
            share = overhead / base_cpu * 100 if overhead is not None and base_cpu else None
            lines.append(
                f"| {side} | {endpoint} | {_fmt(base_cpu, 0)} | {_fmt(our_cpu, 0)} "
                f"| {_fmt(overhead, 1)} [{_fmt(min(diffs), 0)}, {_fmt(max(diffs), 0)}] "
                f"| {_fmt(share, 1)}% | {_fmt(_median([b['wall_us'] for _, b in pairs]), 0)} / "
                f"{_fmt(_median([o['wall_us'] for o, _ in pairs]), 0)} "
                f"| {_safe_overhead(runs, ours, f'{SAFE_BASELINE}-{side}', endpoint)} |"
            )
    lines.append("")
    profiles = cpu.get("profiles", {})
    if profiles.get("skipped"):
        return [*lines, f"Profile skipped: {profiles['skipped']}.", ""]
    for impl in ("dbsession-sync", "dbsession-async"):
        profile = profiles.get(impl)
        if not profile:
            continue
        lines += [
            f"Profile of `{impl}` (pyinstrument, main thread; files: "
            f"{', '.join(f'`results/{name}`' for name in profile['files'])}): our functions, "
            "µs per request.",
            "",
            "| function (src/fastapi_dbsession/…) | inclusive µs | self µs |",
            "|---|--:|--:|",
        ]
        for row in profile["library"][:12]:
            lines.append(
                f"| `{row['function']}` | {row['inclusive_us']:.1f} | {row['self_us']:.1f} |"
            )
        lines.append("")
    return lines


def _cpu_differences(runs: dict[str, Any], ours: str, other: str, endpoint: str) -> list[float]:
    """Per round: our CPU µs per request minus ``other``'s, in the same round."""
    pairs = zip(runs[ours][endpoint], runs[other][endpoint], strict=False)
    return [o["cpu_us"] - b["cpu_us"] for o, b in pairs]


def _safe_overhead(runs: dict[str, Any], ours: str, safe: str, endpoint: str) -> str:
    """Median over rounds of (ours - the hand-written get_db that commits first), or '-'."""
    if endpoint not in runs.get(safe, {}):
        return "-"
    return _fmt(_median(_cpu_differences(runs, ours, safe, endpoint)), 1)


def _versions(results: dict[str, Any]) -> list[str]:
    versions = results["meta"].get("versions", {})
    names = [n for n in (*LIBRARIES, *STACK) if any(n in v for v in versions.values())]
    lines = [
        "| venv | python | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for env, found in versions.items():
        lines.append(
            f"| {env} | {found.get('python', '')} | "
            + " | ".join(found.get(name, "-") for name in names)
            + " |"
        )
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        f"### Results{' (quick mode: smoke numbers, not measurements)' if meta['quick'] else ''}",
        "",
        f"- date: {meta['date']}; machine: {machine['nproc']} cores ({machine['cpu']}), "
        f"{machine['platform']}; PostgreSQL {meta.get('postgresql', '?')} on the same machine",
        f"- load: {meta['loader']}, {meta['connections']} connections, {meta['seconds']} s per "
        f"endpoint, {meta['rounds']} interleaved rounds; server on CPU 0, load on CPU 1 "
        f"({'taskset' if meta['pinned'] else 'NOT pinned'})",
        f"- load average (1, 5, 15 min) before / after the run: "
        f"{meta.get('load_average_before', '?')} / {meta.get('load_average_after', '?')} "
        "(other work on the machine: a 2-core machine is idle near 0)",
        "- x base: median over rounds of (implementation / hand-written baseline of the same "
        "side, same round). Throughput: higher is better; latency: lower is better.",
        "",
        *_versions(results),
        "#### Targets for fastapi_dbsession",
        "",
        *_targets(results),
        *_throughput_tables(results),
        "#### Pool starvation",
        "",
        *_starvation(results),
        "#### Per-request CPU cost (in-process)",
        "",
        *_cpu(results),
    ]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(path: Path, markdown: str) -> None:
    """Replace the text between the results markers of ``path`` with ``markdown``."""
    text = path.read_text()
    start, end = text.index(README_START), text.index(README_END)
    path.write_text(text[: start + len(README_START)] + "\n\n" + markdown + "\n" + text[end:])
