"""Export a database's pool and query figures to Prometheus and OpenTelemetry.

Both are opt-in and installed by a call (``db.prometheus_metrics()``,
``db.opentelemetry_metrics()``): until then nothing is imported and nothing listens. Pool
gauges are read when Prometheus scrapes, from the engines that exist (none is created for
it); statement durations come from engine listeners installed on each engine the manager
creates; the wait at the capacity gate comes from the request dependency's observer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from ._compat import require_module

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from ._database import Database

_START = "fastapi_dbsession.metrics_start"
_registries: dict[int, _PrometheusMetrics] = {}
_registries_lock = threading.Lock()


def prometheus_metrics(database: Database, registry: object = None) -> None:
    """Export ``database``'s figures into ``registry`` (default: prometheus_client's REGISTRY).

    Raises:
        MissingDriverError: prometheus-client is not installed (extra ``[prometheus]``).
    """
    client = require_module("prometheus_client", extra="prometheus")
    target = client.REGISTRY if registry is None else registry
    with _registries_lock:
        metrics = _registries.get(id(target))
        if metrics is None or metrics.registry is not target:
            metrics = _PrometheusMetrics(client, target)
            _registries[id(target)] = metrics
    metrics.add(database)


class _PrometheusMetrics:
    """The metric families of one registry, shared by every manager exported into it."""

    def __init__(self, client: Any, registry: Any) -> None:
        self.registry = registry
        self.databases: list[Database] = []
        labels = ("database", "side")
        self.query_seconds = client.Histogram(
            "fastapi_dbsession_query_duration_seconds",
            "Time SQL statements took, from cursor execute to its return.",
            labels,
            registry=registry,
        )
        self.wait_seconds = client.Histogram(
            "fastapi_dbsession_connection_wait_seconds",
            "Time requests waited at the pool gate for a connection to become free.",
            ("database",),
            registry=registry,
        )
        self.timeouts = client.Counter(
            "fastapi_dbsession_pool_timeouts",
            "Requests refused (503) because no connection became free within the pool timeout.",
            ("database",),
            registry=registry,
        )
        self.engines: dict[tuple[str, str], Engine] = {}
        """The latest engine of each (database, side): what the pool gauges read."""
        registry.register(_PoolCollector(self.databases, self.engines))

    def add(self, database: Database) -> None:
        if database in self.databases:
            return
        self.databases.append(database)
        name = database.config.name
        for side in ("sync", "async"):
            self.query_seconds.labels(name, side)  # series exist (at 0) before the first query
        wait = self.wait_seconds.labels(name)
        timeouts = self.timeouts.labels(name)

        def on_wait(seconds: float, acquired: bool) -> None:
            wait.observe(seconds)
            if not acquired:
                timeouts.inc()

        database.watchers.gate_observers.append(on_wait)

        def on_engine(engine: Engine) -> None:
            side = "async" if engine.dialect.is_async else "sync"
            if engine.pool.logging_name in (name, f"{name}-async"):  # not a replica's pool
                self.engines[name, side] = engine
            _time_statements(engine, self.query_seconds.labels(name, side).observe)

        database.add_engine_hook(on_engine)


class _PoolCollector:
    """Pool gauges, read at scrape time from the engines that exist."""

    def __init__(self, databases: list[Database], engines: dict[tuple[str, str], Engine]) -> None:
        self.core = require_module("prometheus_client.core", extra="prometheus")
        self.databases = databases
        self.engines = engines

    def describe(self) -> list[Any]:
        return []  # families depend on live engines: let the registry call collect()

    def collect(self) -> Iterator[Any]:
        gauge = self.core.GaugeMetricFamily
        size = gauge(
            "fastapi_dbsession_pool_size_connections",
            "Connections the pool keeps (pool_size).",
            labels=("database", "side"),
        )
        connections = gauge(
            "fastapi_dbsession_pool_connections",
            "Pooled connections by state: checked_out (in use) or idle (in the pool).",
            labels=("database", "side", "state"),
        )
        overflow = gauge(
            "fastapi_dbsession_pool_overflow_connections",
            "Connections open beyond pool_size (up to max_overflow).",
            labels=("database", "side"),
        )
        waiting = gauge(
            "fastapi_dbsession_pool_waiting_requests",
            "Requests waiting at the pool gate for a connection right now.",
            labels=("database",),
        )
        for (name, side), engine in list(self.engines.items()):
            pool: Any = engine.pool
            for metric, values, read in (
                (size, (name, side), "size"),
                (overflow, (name, side), "overflow"),
                (connections, (name, side, "checked_out"), "checkedout"),
                (connections, (name, side, "idle"), "checkedin"),
            ):
                reader = getattr(pool, read, None)
                if reader is not None:
                    metric.add_metric(values, max(0, int(reader())))
        for database in list(self.databases):
            sync = database.pool_status().get("sync")
            count = 0 if sync is None or sync.waiting is None else sync.waiting
            waiting.add_metric((database.config.name,), count)
        yield from (size, connections, overflow, waiting)


def _time_statements(engine: Engine, observe: Any) -> None:
    def before(connection: Connection, *_: object) -> None:
        connection.info.setdefault(_START, []).append(time.perf_counter())

    def after(connection: Connection, *_: object) -> None:
        starts: list[float] | None = connection.info.get(_START)
        if starts:
            observe(time.perf_counter() - starts.pop())

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)


def opentelemetry_metrics(database: Database, meter_provider: object = None) -> None:
    """Report the wait at the capacity gate as OpenTelemetry's ``db.client.connection.wait_time``.

    Raises:
        MissingDriverError: opentelemetry-api is not installed.
    """
    require_module("opentelemetry.metrics", extra="opentelemetry")
    from opentelemetry import metrics

    meter = metrics.get_meter("fastapi_dbsession", meter_provider=meter_provider)  # type: ignore[arg-type]
    histogram = meter.create_histogram(
        "db.client.connection.wait_time",
        unit="s",
        description="The time it took to obtain an open connection from the pool",
    )
    attributes = {"db.client.connection.pool.name": database.config.name}

    def on_wait(seconds: float, acquired: bool) -> None:
        histogram.record(seconds, attributes)

    database.watchers.gate_observers.append(on_wait)
