"""A PostgreSQL restart mid-load: the app serves again as soon as the server accepts.

The suite's own PostgreSQL cluster (tests/clusters.py; never the shared server) behind a real
uvicorn (tests/reliability/audit_app.py), keyed writes from 8 clients; mid-load the cluster is
stopped (``fast``: every connection ended), kept down for a second and started. Every request
is answered (none hangs while the server is down: they fail fast with 503), every 2xx row is
present exactly once and every error's row absent (the audit of
tests/reliability/test_acknowledged_writes.py), and the first 2xx comes within a second of the
server accepting connections (the figure is printed: "recovery_s").
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import URL

from tests._uvicorn import httpx, serve
from tests.clusters import Cluster
from tests.reliability import audit, figures

pytestmark = pytest.mark.topology

CLIENTS = 8
BEFORE, DOWN, AFTER = 1.0, 1.0, 1.5  # seconds of load before the stop, of outage, after


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """The suite's own PostgreSQL cluster, with an empty audit table."""
    own: Cluster = request.getfixturevalue("topology").primary(name="restart")
    audit.create_table(own.url())
    return own


async def _load_through_restart(
    base: str, side: str, cluster: Cluster
) -> tuple[list[audit.Answer], dict[str, float]]:
    done = asyncio.Event()
    times: dict[str, float] = {}

    def restart() -> None:
        time.sleep(BEFORE)
        times["stop"] = time.monotonic()
        cluster.stop("fast")
        times["stopped"] = time.monotonic()
        time.sleep(DOWN)
        cluster.start()  # returns once it accepts connections (polled every 10 ms)
        times["accepting"] = time.monotonic()
        time.sleep(AFTER)

    async def restart_then_stop() -> None:
        try:
            await asyncio.to_thread(restart)
        finally:
            done.set()

    answers, _ = await asyncio.gather(
        audit.send_until(base, f"/{side}", done, concurrency=CLIENTS), restart_then_stop()
    )
    return answers, times


def test_restart_mid_load_recovers_at_once(cluster: Cluster, side: str) -> None:
    url: URL = cluster.url()
    env = {
        "FDBS_URL": url.render_as_string(hide_password=False),
        "FDBS_ASYNC_URL": cluster.url("asyncpg").render_as_string(hide_password=False),
    }
    with serve("tests.reliability.audit_app:app", env, ready_path="/up") as base:
        answers, times = asyncio.run(_load_through_restart(base, side, cluster))
        pool = httpx.get(f"{base}/figures").json()

    found = audit.audit(url, answers)
    first_ok = min(a.ended for a in answers if a.status == 200 and a.started >= times["stopped"])
    recovery = first_ok - times["accepting"]
    failed_while_down = [
        a for a in answers if a.status != 200 and times["stop"] <= a.started < times["accepting"]
    ]
    figures.record(
        f"restart[postgresql-{side}]",
        {
            **found,
            "restarts": 1,
            "down_s": round(times["accepting"] - times["stop"], 3),
            "recovery_s": round(recovery, 3),
            "failed_while_down": len(failed_while_down),
        },
    )
    assert failed_while_down, "no request reached the app while the server was down"
    assert recovery < 1.0
    assert found["longest_request_s"] < 5  # type: ignore[operator]
    assert pool["sync_checked_out"] == pool["async_checked_out"] == 0
