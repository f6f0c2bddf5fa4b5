"""Turn the raw results of run.py into medians, paired ratios, noise bands and Markdown tables."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import instructions

ENDPOINTS = ("read", "write", "list")
THROUGHPUT_TARGET = 1.00  # issue 13: req/s >= 1.00x and p99 <= 1.05x the tutorial pattern
P99_TARGET = 1.05
CPU_TARGET_US = 10.0  # in-process CPU <= +10 µs per request over the tutorial pattern
BASELINE = "tutorial"
"""The tutorial pattern as written (``tutorial-sync`` / ``tutorial-async``): every ratio's and
every difference's denominator."""
PEER_PREFIXES = ("tutorial", "handwritten", "dbsession", "asyncpg")
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

    ``baseline`` defaults to the side's tutorial pattern.
    """
    meta = results["meta"]["impls"]
    side = meta[impl]["side"]
    baseline = baseline or f"{BASELINE}-{side}"
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
    roundtrips = results.get("roundtrips", {})
    for impl in results["meta"]["impls"]:
        if (
            (
                impl in results["throughput"]
                and any(cell(results, impl, endpoint)["invalid"] for endpoint in ENDPOINTS)
            )
            or results["starvation"].get(impl, {}).get("problem")
            or any(run.get("problem") for run in roundtrips.get(impl, {}).values())
        ):
            bad.append(impl)
    for env, cpu in (results.get("cpu") or {}).items():
        if cpu.get("problem") or any(
            run["bad"]
            for endpoints in cpu.get("runs", {}).values()
            for runs in endpoints.values()
            for run in runs
        ):
            bad.append(f"cpu scenario ({env} venv)")
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
            "| endpoint | implementation | xact/req | calls/req | req/s | x base | p50 ms | x base "
            "| p99 ms | x base | server CPU µs/req | x base | errors | notes |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for endpoint in ENDPOINTS:
            for impl in impls:
                c = cell(results, impl, endpoint)
                label = meta["impls"][impl]["label"]
                notes = list(results["correctness"].get(impl, {}).get("notes", []))
                if impl == f"{BASELINE}-{side}":
                    notes.insert(
                        0,
                        f"noise band: req/s {_pct(c['rps_spread'])}, p50 "
                        f"{_pct(c['p50_ms_spread'])}, p99 {_pct(c['p99_ms_spread'])}, CPU "
                        f"{_pct(c['cpu_us_spread'])}",
                    )
                name = f"**INVALID** {label}" if c["invalid"] else label
                if c["invalid"]:
                    notes.insert(0, f"INVALID: {one_line(c['problem'])}")
                trips = results.get("roundtrips", {}).get(impl, {}).get(endpoint, {})
                lines.append(
                    f"| {endpoint} | {name} | {_fmt(trips.get('xacts'))} "
                    f"| {_fmt(trips.get('calls'))} | {_fmt(c['rps'], 0)} "
                    f"| {_ratio(c['rps_ratio'])} "
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


def _peers(results: dict[str, Any], side: str) -> list[str]:
    meta = results["meta"]["impls"]
    return [
        impl
        for impl, info in meta.items()
        if info["side"] == side and not impl.startswith(PEER_PREFIXES)
    ]


def _trips(results: dict[str, Any], impl: str, endpoint: str) -> dict[str, Any]:
    return dict(results.get("roundtrips", {}).get(impl, {}).get(endpoint, {}))


def _trips_verdict(results: dict[str, Any], ours: str, base: str, endpoint: str) -> str:
    """Round trips per request against the tutorial pattern's: ``xact a / b, calls c / d``."""
    mine, theirs = _trips(results, ours, endpoint), _trips(results, base, endpoint)
    if mine.get("calls") is None or theirs.get("calls") is None:
        return "not measured"
    # Driver calls are exact; the server's count can pick up a stray transaction (a new pooled
    # connection's start-up, autovacuum), so it is compared with 0.02 of slack.
    met = mine["calls"] <= theirs["calls"] and (
        mine.get("xacts") is None
        or theirs.get("xacts") is None
        or mine["xacts"] <= theirs["xacts"] + 0.02
    )
    return (
        f"xact {_fmt(mine.get('xacts'))} / {_fmt(theirs.get('xacts'))}, calls "
        f"{_fmt(mine['calls'])} / {_fmt(theirs['calls'])} {'met' if met else '**MISSED**'}"
    )


def _cpu_verdict(results: dict[str, Any], ours: str, base: str, endpoint: str) -> str:
    runs = (results.get("cpu") or {}).get("core", {}).get("runs", {})
    if endpoint not in runs.get(ours, {}) or endpoint not in runs.get(base, {}):
        return "not measured"
    overhead = _median(_cpu_differences(runs, ours, base, endpoint))
    met = overhead is not None and overhead <= CPU_TARGET_US
    verdict = f"timed {_fmt(overhead, 1)} {'met' if met else '**MISSED**'}"
    counted = instructions.overhead(results, ours, base, endpoint)
    if counted is not None:  # the steadier figure: instructions, at native µs per instruction
        met = counted <= CPU_TARGET_US
        verdict += f"; counted {counted:+.1f} {'met' if met else '**MISSED**'}"
    return verdict


def _targets(results: dict[str, Any]) -> list[str]:
    lines = [
        "| side | endpoint | round trips ≤ tutorial (ours / tutorial) | req/s x base (≥ 1.00) "
        "| p99 x base (≤ 1.05) | in-process CPU µs over base (≤ +10) | server CPU/req x base "
        "| ahead of every peer (req/s) | req/s, p99 x hand-written that commits first |",
        "|---|---|---|---|---|---|--:|---|---|",
    ]
    for side in ("sync", "async"):
        ours, base = f"dbsession-{side}", f"{BASELINE}-{side}"
        if ours not in results["meta"]["impls"]:
            continue
        peers = [impl for impl in _peers(results, side) if impl in results["throughput"]]
        measured = ours in results["throughput"]
        for endpoint in ENDPOINTS:
            c = cell(results, ours, endpoint) if measured else {}
            rps = p99 = "not measured"
            ahead = safe = "-"
            if measured:
                base_cell = cell(results, base, endpoint)
                rps = _verdict(
                    c["rps_ratio"], THROUGHPUT_TARGET, base_cell["rps_spread"], higher=True
                )
                p99 = _verdict(
                    c["p99_ms_ratio"], P99_TARGET, base_cell["p99_ms_spread"], higher=False
                )
                rps, p99 = f"{_ratio(c['rps_ratio'])} {rps}", f"{_ratio(c['p99_ms_ratio'])} {p99}"
                behind = []
                for peer in peers:
                    other = cell(results, peer, endpoint)
                    if other["invalid"] or c["rps_ratio"] is None or other["rps_ratio"] is None:
                        continue
                    if other["rps_ratio"] >= c["rps_ratio"]:
                        behind.append(f"{peer} ({other['rps_ratio']:.3f})")
                ahead = "yes" if not behind else "**no**: " + ", ".join(behind)
                ahead = ahead if peers else "-"
                if f"{SAFE_BASELINE}-{side}" in results["throughput"]:
                    vs = cell(results, ours, endpoint, baseline=f"{SAFE_BASELINE}-{side}")
                    safe = f"{_ratio(vs['rps_ratio'])}, {_ratio(vs['p99_ms_ratio'])}"
            lines.append(
                f"| {side} | {endpoint} | {_trips_verdict(results, ours, base, endpoint)} "
                f"| {rps} | {p99} | {_cpu_verdict(results, ours, base, endpoint)} "
                f"| {_ratio(c.get('cpu_us_ratio'))} | {ahead} | {safe} |"
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


def _roundtrips(results: dict[str, Any]) -> list[str]:
    trips = results.get("roundtrips") or {}
    if not trips:
        return []
    meta = results["meta"]["impls"]
    requests = next(
        (
            run["requests"]
            for entry in trips.values()
            for run in entry.values()
            if "requests" in run
        ),
        0,
    )
    lines = [
        f"Each implementation alone under `driver_calls.py`, {requests} sequential requests per "
        "endpoint over one keep-alive connection after a warm-up. *xact/req*: the server's "
        "`xact_commit + xact_rollback` for the benchmark database (`pg_stat_database`, every "
        "connection's statistics flushed before and after with `pg_stat_force_next_flush()`, "
        "the flushes themselves left out) ÷ requests. *calls/req*: statements the driver sent, "
        "counted in the server process (psycopg: commands, queries, prepares; asyncpg: "
        "protocol `query` / `prepare` / `bind_execute` / ... calls) ÷ requests: without "
        "pipelining, each is one round trip. *one request*: the calls of one request, in order "
        "(`;` is SQLAlchemy's pre-ping on PostgreSQL). *new connections*: opened during the "
        "counted requests (each adds its start-up transaction to xact).",
        "",
        "| implementation | side | xact/req read / write / list | calls/req read / write / list "
        "| one read | one write | new connections |",
        "|---|---|---|---|---|---|--:|",
    ]
    for impl, entry in trips.items():
        info = meta[impl]
        problems = [run["problem"] for run in entry.values() if run.get("problem")]
        name = f"**INVALID** {info['label']}" if problems else info["label"]
        if problems:
            name += f" ({one_line(problems[0])})"
        xacts = " / ".join(_fmt(entry.get(e, {}).get("xacts")) for e in ENDPOINTS)
        calls = " / ".join(_fmt(entry.get(e, {}).get("calls")) for e in ENDPOINTS)
        traces = [" · ".join(entry.get(e, {}).get("trace", [])) or "-" for e in ("read", "write")]
        connects = sum(entry.get(e, {}).get("connects", 0) for e in ENDPOINTS)
        lines.append(
            f"| {name} | {info['side']} | {xacts} | {calls} | `{traces[0]}` | `{traces[1]}` "
            f"| {connects} |"
        )
    return [*lines, ""]


def _cpu(results: dict[str, Any]) -> list[str]:
    processes = results.get("cpu") or {}
    if not processes:
        return []
    lines: list[str] = []
    for env, cpu in processes.items():
        if cpu.get("problem"):
            lines += [f"**INVALID** ({env} venv): {one_line(cpu['problem'], 400)}", ""]
    measured = {env: cpu for env, cpu in processes.items() if not cpu.get("problem")}
    if not measured:
        return lines
    first = next(iter(measured.values()))
    lines += [
        f"{first['rounds']} rounds x {first['requests']} sequential requests per endpoint, raw "
        "ASGI calls in one process against PostgreSQL (no HTTP, no network), one process per "
        "venv: the core venv's apps together, each peer beside the tutorial pattern in its own "
        "venv. CPU = process time (all threads) per request; *over the tutorial* = median over "
        "rounds of (implementation - tutorial pattern) in the same round and process, [min, "
        "max]; the tutorial's row gives its own spread over rounds (its noise band). `noop` "
        "takes the session and never uses it: the session machinery alone, without a round trip.",
        "",
        "| side | endpoint | implementation | CPU µs | over the tutorial µs | over % "
        "| wall µs | tutorial CPU µs, same process |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    meta = results["meta"]["impls"]
    for side in ("sync", "async"):
        base = f"{BASELINE}-{side}"
        for endpoint in (*ENDPOINTS, "noop"):
            for env, cpu in measured.items():
                runs = cpu["runs"]
                if endpoint not in runs.get(base, {}):
                    continue
                for impl in runs:
                    if meta[impl]["side"] != side or (impl == base and env != "core"):
                        continue
                    lines.append(
                        _cpu_row(runs, impl, base, endpoint, label=meta[impl]["label"], side=side)
                    )
    lines.append("")
    return lines + _profiles(measured.get("core", {}).get("profiles", {}))


def _cpu_row(
    runs: dict[str, Any], impl: str, base: str, endpoint: str, *, label: str, side: str
) -> str:
    mine = runs[impl][endpoint]
    cpu = _median([run["cpu_us"] for run in mine])
    wall = _median([run["wall_us"] for run in mine])
    base_cpu = _median([run["cpu_us"] for run in runs[base][endpoint]])
    if impl == base:
        over = f"baseline, noise band {_pct(_spread([run['cpu_us'] for run in mine]))}"
        share = "-"
    else:
        diffs = _cpu_differences(runs, impl, base, endpoint)
        overhead = _median(diffs)
        over = f"{_signed(overhead)} [{_signed(min(diffs), 0)}, {_signed(max(diffs), 0)}]"
        share = f"{overhead / base_cpu * 100:+.1f}%" if overhead is not None and base_cpu else "-"
    return (
        f"| {side} | {endpoint} | {label} | {_fmt(cpu, 0)} | {over} | {share} | {_fmt(wall, 0)} "
        f"| {_fmt(base_cpu, 0)} |"
    )


def _signed(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _profiles(profiles: dict[str, Any]) -> list[str]:
    if profiles.get("skipped"):
        return [f"Profile skipped: {profiles['skipped']}.", ""]
    lines: list[str] = []
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
    """Per round: ``ours``' CPU µs per request minus ``other``'s, in the same round."""
    pairs = zip(runs[ours][endpoint], runs[other][endpoint], strict=False)
    return [o["cpu_us"] - b["cpu_us"] for o, b in pairs]


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
        f"- fastapi_dbsession measured: {meta.get('library', '?')}",
        "- x base: median over rounds of (implementation / the tutorial pattern as written, same "
        "side, same round). Throughput: higher is better; latency: lower is better.",
        "",
        *_versions(results),
        "#### Targets for fastapi_dbsession (issue 13)",
        "",
        *_targets(results),
        *_section("Round trips per request", _roundtrips(results)),
        *_throughput_tables(results),
        *_section("Pool starvation", _starvation(results) if results["starvation"] else []),
        *_section("Per-request CPU cost (in-process)", _cpu(results)),
        *_section(
            "Instructions per request (in-process, callgrind)",
            instructions.render(
                results,
                {impl: info["side"] for impl, info in meta["impls"].items()},
                {impl: info["label"] for impl, info in meta["impls"].items()},
            ),
        ),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _section(title: str, body: list[str]) -> list[str]:
    """A heading and its body, or nothing for a scenario that did not run."""
    return [f"#### {title}", "", *body] if body else []


def update_readme(path: Path, markdown: str) -> None:
    """Replace the text between the results markers of ``path`` with ``markdown``."""
    text = path.read_text()
    start, end = text.index(README_START), text.index(README_END)
    path.write_text(text[: start + len(README_START)] + "\n\n" + markdown + "\n" + text[end:])
