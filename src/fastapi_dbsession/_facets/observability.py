"""The manager's observability members: its name in logs and metrics, engine hooks, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fastapi_dbsession import _metrics

from ._base import Facet

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_Hook = TypeVar("_Hook", bound=Callable[["Engine"], object])


class ObservabilityFacet(Facet):
    """``name``, ``on_engine_created``, ``prometheus_metrics``, ``opentelemetry_metrics``."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """This database's name in log lines, ``Server-Timing`` and metric labels."""
        return self._database.config.name

    def on_engine_created(self, callback: _Hook) -> _Hook:
        """Call ``callback(engine)`` for each engine the manager creates, and those it has.

        Engines are created lazily (and again after ``dispose()``), so instrumentation that
        needs the engine object, such as OpenTelemetry's ``SQLAlchemyInstrumentor``, hooks in
        here. An async engine is passed as its ``sync_engine`` (what SQLAlchemy's events and
        the instrumentors take); ``engine.dialect.is_async`` tells the sides apart. Usable as a
        decorator.

        Example:
            >>> db.on_engine_created(lambda engine: SQLAlchemyInstrumentor().instrument(
            ...     engine=engine, enable_commenter=False))
        """
        self._database.add_engine_hook(callback)
        return callback

    def prometheus_metrics(self, registry: object = None) -> None:
        """Export pool and query figures with prometheus-client (extra ``[prometheus]``).

        Metrics are labelled ``database`` (this manager's ``name``) and, for the pool and the
        statements, ``side`` (``sync`` / ``async``); see "Operating in production" for the list.

        Args:
            registry: A ``prometheus_client.CollectorRegistry`` (default: the global one).

        Raises:
            MissingDriverError: prometheus-client is not installed.

        Example:
            >>> db.prometheus_metrics()
            >>> app.mount("/metrics", prometheus_client.make_asgi_app())
        """
        _metrics.prometheus_metrics(self._database, registry)

    def opentelemetry_metrics(self, meter_provider: object = None) -> None:
        """Record the wait for a pool connection as ``db.client.connection.wait_time``.

        A histogram in seconds with the attribute ``db.client.connection.pool.name`` (this
        manager's ``name``): how long each sync request waited at the library's pool gate.

        Args:
            meter_provider: An OpenTelemetry ``MeterProvider`` (default: the global one).

        Raises:
            MissingDriverError: opentelemetry-api is not installed.
        """
        _metrics.opentelemetry_metrics(self._database, meter_provider)
