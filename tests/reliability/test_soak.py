"""A soak, opt-in: minutes of writes under backend kills, memory and pool flat throughout.

Set ``FDBS_SOAK=1`` (or ``FDBS_RELIABILITY=long``) to run it; ``FDBS_SOAK_SECONDS`` sets the
length of each run (default 180). Keyed writes from 8 clients go to a real uvicorn
(tests/reliability/audit_app.py, pool 5+0) while every backend of the test's own database is
killed every 2 s. The app's resident memory and checked-out connections are sampled 20 times:
the memory of the last quarter stays within 16 MiB of the second quarter's (the first is
warm-up), never more connections are out than the pool holds, none once the load stops, and
the audit of tests/reliability/test_acknowledged_writes.py holds for every write.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest

from tests._uvicorn import httpx, serve
from tests.conftest import Backend
from tests.reliability import audit, figures
from tests.reliability.conftest import LONG

SOAK = LONG or os.environ.get("FDBS_SOAK", "") == "1"
SECONDS = float(os.environ.get("FDBS_SOAK_SECONDS", "180"))
CLIENTS = 8
POOL = 5
KILL_EVERY = 2.0
SAMPLES = 20
GROWTH_KIB = 16 * 1024

pytestmark = [
    pytest.mark.skipif(not SOAK, reason="the soak is opt-in: FDBS_SOAK=1"),
    pytest.mark.timeout(SECONDS + 120),
]


async def _soak(base: str, side: str) -> tuple[list[audit.Answer], list[dict[str, float]]]:
    done = asyncio.Event()
    samples: list[dict[str, float]] = []

    async def sample() -> None:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(SAMPLES):
                await asyncio.sleep(SECONDS / SAMPLES)
                found = (await client.get(f"{base}/figures")).json()
                samples.append({**found, "at_s": round(time.monotonic() - started, 1)})
        done.set()

    answers, _ = await asyncio.gather(
        audit.send_until(base, f"/{side}", done, concurrency=CLIENTS), sample()
    )
    return answers, samples


def _quarter(samples: list[dict[str, float]], which: int) -> list[float]:
    size = len(samples) // 4
    return [s["rss_kib"] for s in samples[which * size : (which + 1) * size]]


def test_soak_keeps_memory_and_pool_flat(audited: Backend, side: str) -> None:
    env = {**audit.server_env(audited), "FDBS_POOL_SIZE": str(POOL)}
    with serve("tests.reliability.audit_app:app", env, ready_path="/up") as base:
        with audit.Killer(audited.url, KILL_EVERY) as killer:
            answers, samples = asyncio.run(_soak(base, side))
        final = httpx.get(f"{base}/figures").json()

    found = audit.audit(audited.url, answers)
    baseline = statistics.median(_quarter(samples, 1))
    last = statistics.median(_quarter(samples, 3))
    out = [int(s["sync_checked_out"] + s["async_checked_out"]) for s in samples]
    figures.record(
        f"soak[{audited.name}-{side}]",
        {
            **found,
            "seconds": SECONDS,
            "backends_killed": killer.kills,
            "rss_kib_first_sample": samples[0]["rss_kib"],
            "rss_kib_second_quarter": baseline,
            "rss_kib_last_quarter": last,
            "rss_kib_final": final["rss_kib"],
            "checked_out_max": max(out),
        },
    )
    assert killer.kills >= 1
    assert last - baseline < GROWTH_KIB, samples
    assert max(out) <= POOL
    assert final["sync_checked_out"] == final["async_checked_out"] == 0
