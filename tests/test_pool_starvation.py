"""No pool starvation: pool 3+0, 100 concurrent requests through a real uvicorn server.

The known FastAPI trap: a sync endpoint checks out its connection in a worker thread, and its
response_model is validated in another worker thread. With more requests than connections,
all 40 workers block in the pool while the requests holding connections wait for a worker:
only about a fifth succeed before the pool timeout. The request session waits for pool
capacity on the event loop instead, so every request gets through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.pool import NullPool

from tests._uvicorn import httpx, serve
from tests.conftest import SERVERS, Backend
from tests.models import Item

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(backend: Backend) -> Iterator[str]:
    engine = create_engine(backend.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(insert(Item), [{"name": f"item-{n}"} for n in range(5)])
    engine.dispose()
    env = {
        "FDBS_URL": backend.url.render_as_string(hide_password=False),
        "FDBS_ASYNC_URL": backend.async_url.render_as_string(hide_password=False),
    }
    with serve("tests.starvation_app:app", env, ready_path="/health") as base:
        yield base


async def _load(url: str, count: int) -> list[int | str]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> int | str:
            try:
                response = await client.get(url)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(count)))


def test_100_concurrent_requests_on_a_pool_of_3_all_succeed(server: str, side: str) -> None:
    outcomes = asyncio.run(_load(f"{server}/{side}/items", 100))

    assert outcomes.count(200) == 100, outcomes
    assert httpx.get(f"{server}/pool").json() == {"sync": 0, "async": 0}


@pytest.mark.parametrize("backend", [SERVERS["postgresql"]], indirect=True)
def test_control_the_hand_written_pattern_starves(server: str) -> None:
    """Proof that the scenario is the real trap: the seed's get_db() loses most requests."""
    outcomes = asyncio.run(_load(f"{server}/handwritten/items", 100))

    assert outcomes.count(200) < 100, outcomes


def test_client_disconnect_returns_the_connection(server: str, side: str, backend: Backend) -> None:
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server}/{side}/slow", params={"name": "gone"}, timeout=0.1)
    deadline = time.monotonic() + 10
    while httpx.get(f"{server}/pool").json() != {"sync": 0, "async": 0}:
        assert time.monotonic() < deadline, "the connection never came back to the pool"
        time.sleep(0.05)
    # The endpoint finished normally, so its work was committed: a disconnect is not an error.
    assert "gone" in backend.names()
