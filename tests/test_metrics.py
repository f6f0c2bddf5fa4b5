"""Metrics and traces: Prometheus figures, the engine-created hook, OpenTelemetry spans and waits.

Prometheus figures are read from a real ``CollectorRegistry`` after real requests; spans come
from the real ``opentelemetry-instrumentation-sqlalchemy`` into the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager
from tests.conftest import Backend


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def _app(
    db: DatabaseSessionManager, seen: dict[str, float], registry: CollectorRegistry
) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/sync")
    def sync_route(session: Session = Depends(db.session)) -> int:
        session.execute(text("SELECT 1"))
        seen["checked_out"] = _value(
            registry,
            "fastapi_dbsession_pool_connections",
            database=db.name,
            side="sync",
            state="checked_out",
        )
        session.execute(text("SELECT 2"))
        return 1

    @app.get("/async")
    async def async_route(session: AsyncSession = Depends(db.async_session)) -> int:
        await session.execute(text("SELECT 1"))
        return 1

    return app


def test_prometheus_exports_pool_and_query_figures(backend: Backend) -> None:
    registry = CollectorRegistry()
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url, name="shop")
    db.prometheus_metrics(registry)
    seen: dict[str, float] = {}
    with TestClient(_app(db, seen, registry)) as client:
        assert client.get("/sync").status_code == 200
        assert client.get("/sync").status_code == 200
        assert client.get("/async").status_code == 200
        after = {
            state: _value(
                registry,
                "fastapi_dbsession_pool_connections",
                database="shop",
                side="sync",
                state=state,
            )
            for state in ("checked_out", "idle")
        }
        size = _value(
            registry, "fastapi_dbsession_pool_size_connections", database="shop", side="sync"
        )
        statements = {
            side: _value(
                registry,
                "fastapi_dbsession_query_duration_seconds_count",
                database="shop",
                side=side,
            )
            for side in ("sync", "async")
        }
        waits = _value(registry, "fastapi_dbsession_connection_wait_seconds_count", database="shop")
        waiting = _value(registry, "fastapi_dbsession_pool_waiting_requests", database="shop")

    assert seen["checked_out"] == 1  # during the request, its connection is out
    assert after == {"checked_out": 0, "idle": 1}  # back in the pool after it
    assert size == 5  # SQLAlchemy's default pool_size
    sqlite_begin = 1 if backend.name == "sqlite" else 0  # the library's explicit BEGIN
    startup = 1 + sqlite_begin  # the lifespan's startup check on each side: SELECT 1
    assert statements == {
        "sync": startup + 2 * (2 + sqlite_begin),
        "async": startup + 1 + sqlite_begin,
    }
    assert waits == 2  # each sync request passed the pool gate once
    assert waiting == 0


def test_prometheus_counts_waiters_and_pool_timeouts(backend: Backend) -> None:
    registry = CollectorRegistry()
    db = DatabaseSessionManager(
        backend.url, engine_options={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5}
    )
    db.prometheus_metrics(registry)
    app = FastAPI(lifespan=db.lifespan)
    waiting_seen: list[float] = []
    release = threading.Event()

    @app.get("/hold")
    def hold(session: Session = Depends(db.session)) -> int:
        session.execute(text("SELECT 1"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not release.is_set():
            now = _value(registry, "fastapi_dbsession_pool_waiting_requests", database=db.name)
            if now:
                waiting_seen.append(now)
                break
            time.sleep(0.01)
        release.wait(5)
        return 1

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            db.lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            first = asyncio.create_task(client.get("/hold"))
            await asyncio.sleep(0.1)
            second = await client.get("/hold")  # waits at the gate, then times out
            release.set()
            return [(await first).status_code, second.status_code]

    statuses = asyncio.run(run())
    assert statuses[0] == 200
    assert statuses[1] >= 500  # refused: no connection became free in time
    assert waiting_seen == [1]
    assert _value(registry, "fastapi_dbsession_pool_timeouts_total", database=db.name) == 1
    waited = _value(registry, "fastapi_dbsession_connection_wait_seconds_sum", database=db.name)
    assert waited >= 0.5  # the refused request's wait is in the histogram


def test_two_managers_share_a_registry_with_their_own_labels(tmp_path: Any) -> None:
    registry = CollectorRegistry()
    orders = DatabaseSessionManager(f"sqlite:///{tmp_path}/orders.db")
    billing = DatabaseSessionManager(f"sqlite:///{tmp_path}/billing.db")
    for db in (orders, billing):
        db.prometheus_metrics(registry)
        db.prometheus_metrics(registry)  # twice: no duplicate series, no error
        with db.transaction() as session:
            session.execute(text("SELECT 1"))
    for name in ("orders", "billing"):
        count = _value(
            registry, "fastapi_dbsession_query_duration_seconds_count", database=name, side="sync"
        )
        assert count == 2  # BEGIN + SELECT, counted once although exported twice
    orders.dispose()
    billing.dispose()


def test_engine_created_hook_sees_every_engine_including_recreated_ones(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    with db.transaction() as session:  # the sync engine exists before the hook
        session.execute(text("SELECT 1"))
    created: list[Engine] = []

    @db.on_engine_created
    def remember(engine: Engine) -> None:
        created.append(engine)

    assert created == [db.engine]  # the live engine at once
    db.dispose()
    recreated = db.engine
    assert created == [created[0], recreated]
    async_engine = db.async_engine
    assert created[-1] is async_engine.sync_engine
    assert created[-1].dialect.is_async
    assert recreated.pool.logging_name == db.name  # OpenTelemetry's pool.name
    assert async_engine.sync_engine.pool.logging_name == f"{db.name}-async"
    db.dispose()


@pytest.fixture
def spans() -> Iterator[Any]:
    """OpenTelemetry's SQLAlchemy instrumentation, globally on, into an in-memory exporter."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # skip_dep_check: the instrumentation declares "sqlalchemy < 2.1" but works on 2.1
    SQLAlchemyInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    try:
        yield exporter
    finally:
        SQLAlchemyInstrumentor().uninstrument()


def test_opentelemetry_instrumentation_traces_the_lazily_created_engines(
    backend: Backend, side: str, spans: Any
) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)  # no engine yet
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/sync")
    def sync_route(session: Session = Depends(db.session)) -> int:
        return int(session.scalar(text("SELECT 41 + 1")))

    @app.get("/async")
    async def async_route(session: AsyncSession = Depends(db.async_session)) -> int:
        return int(await session.scalar(text("SELECT 41 + 1")))

    with TestClient(app) as client:
        assert client.get(f"/{side}").json() == 42

    statements = [
        span.attributes.get("db.statement") or span.attributes.get("db.query.text")
        for span in spans.get_finished_spans()
    ]
    assert "SELECT 41 + 1" in statements, statements
    [span] = [s for s in spans.get_finished_spans() if "41 + 1" in str(s.attributes)]
    assert span.attributes.get("db.system") or span.attributes.get("db.system.name")


def test_opentelemetry_records_the_wait_for_a_connection(backend: Backend) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    db = DatabaseSessionManager(backend.url, name="shop")
    db.opentelemetry_metrics(MeterProvider(metric_readers=[reader]))
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/")
    def route(session: Session = Depends(db.session)) -> int:
        return int(session.scalar(text("SELECT 1")))

    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/").status_code == 200

    data = reader.get_metrics_data()
    points = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "db.client.connection.wait_time" and metric.unit == "s"
        for point in metric.data.data_points
    ]
    [point] = points
    assert point.attributes == {"db.client.connection.pool.name": "shop"}
    assert point.count == 3
