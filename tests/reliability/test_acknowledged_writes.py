"""A 2xx means durable, an error means absent, while every backend is killed every 200 ms.

Keyed concurrent writes go to a real uvicorn (tests/reliability/audit_app.py, pool 5+0) while
a killer ends every backend of the test's own database every 200 ms (the other databases of
the shared server are never touched). Afterwards each answer is checked against the table
(tests/reliability/audit.py): every 2xx row present exactly once, every error's row absent,
every request answered; the answers whose commit outcome is unknown
(:class:`CommitOutcomeUnknownError`: the library gives them no status of their own, so they
are 500s like any unhandled error; the app tags them) are counted apart and may be either.
PostgreSQL and MariaDB, the sync and the async side. ``FDBS_RELIABILITY=long``: 2,000 writes
per setup instead of 200.
"""

from __future__ import annotations

import asyncio

from tests._uvicorn import httpx, serve
from tests.conftest import Backend
from tests.reliability import audit, figures
from tests.reliability.conftest import LONG

WRITES = 2000 if LONG else 200
CONCURRENCY = 20
KILL_EVERY = 0.2


def test_acknowledged_writes_survive_backends_killed_every_200ms(
    audited: Backend, side: str
) -> None:
    keys = [f"{side}-{number}" for number in range(WRITES)]
    with serve(
        "tests.reliability.audit_app:app", audit.server_env(audited), ready_path="/up"
    ) as base:
        with audit.Killer(audited.url, KILL_EVERY) as killer:
            answers = asyncio.run(audit.send(base, f"/{side}", keys, concurrency=CONCURRENCY))
        # once the kills stop, the pool heals and nothing stays checked out
        after = asyncio.run(audit.send(base, f"/{side}", ["after"], concurrency=1))
        pool = httpx.get(f"{base}/figures").json()

    found = audit.audit(audited.url, answers + after)
    figures.record(
        f"acknowledged-writes[{audited.name}-{side}]",
        {**found, "backends_killed": killer.kills, "kill_rounds": killer.rounds},
    )
    assert killer.kills >= 1, "no backend was killed: the test injected no fault"
    assert found["acknowledged"] >= 1
    assert after[0].status == 200
    assert pool["sync_checked_out"] == pool["async_checked_out"] == 0
