"""The manager's operations methods: the lifespan, pings, the health router, the pool's status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fastapi_dbsession import _endpoints

from ._base import Facet

if TYPE_CHECKING:
    from fastapi_dbsession._pressure import PoolStatus
    from fastapi_dbsession._probes import PingResult, Prober


class OperationsFacet(Facet):
    """``lifespan``, ``ping()`` / ``async_ping()``, ``health_router()``, ``pool_status()``."""

    __slots__ = ()
    _prober: Prober
    async_session: Callable[..., Awaitable[Any]]

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Check connectivity at startup and dispose the engines at shutdown.

        ``FastAPI(lifespan=db.lifespan)``, or ``async with db.lifespan(app):`` in your own.
        Only the URLs you gave are checked: a derived twin is created on first use.

        The check retries ``startup_retries`` times with backoff, each attempt within
        ``startup_timeout`` seconds.

        Raises:
            DatabaseUnavailableError: A configured database cannot be reached; names host and
                port (password masked).
        """
        _endpoints.warn_ignored_events(app)
        _endpoints.check_endpoints(app, self.async_session)
        await self._prober.startup()
        try:
            yield
        finally:
            await self._database.shutdown()

    def ping(self, timeout: float = 2.0) -> PingResult:
        """Run ``SELECT 1`` on the sync side and say whether it answered within ``timeout``.

        Never raises for an unreachable or frozen database, and never waits longer than
        ``timeout`` (a server that accepts the connection and never answers included). Uses a
        connection of its own, not one of the pool's.

        Args:
            timeout: The deadline in seconds.

        Returns:
            ``PingResult``: ``status`` (``"ok"`` / ``"unavailable"``), ``latency``, ``error``.

        Example:
            >>> if not db.ping(timeout=1.0).ok:
            ...     logger.error("database down")
        """
        return self._prober.ping(timeout)

    async def async_ping(self, timeout: float = 2.0) -> PingResult:  # noqa: ASYNC109 (the API)
        """Async twin of :meth:`ping`, on the async side: ``await db.async_ping(timeout=2.0)``."""
        return await self._prober.async_ping(timeout)

    def pool_status(self) -> dict[str, PoolStatus]:
        """Return a snapshot of each created engine's pool, keyed ``"sync"`` / ``"async"``.

        Asking creates no engine: a side that has not been used yet is absent.

        Example:
            >>> db.pool_status()["sync"].checked_out
            3
        """
        return self._database.pool_status()

    def health_router(self, *, prefix: str = "/health", timeout: float = 2.0) -> APIRouter:
        """Return a router with liveness and readiness endpoints for probes.

        - ``GET {prefix}/live``: 200 ``{"status": "ok"}`` while the process serves requests;
          it never touches the database (a database outage must not restart the app);
        - ``GET {prefix}/ready``: pings the sides whose URL was given, each within
          ``timeout``: 200 ``{"status": "ok", "latency_ms": 1.2}``, or 503
          ``{"status": "unavailable", "latency_ms": ...}``. No SQL, URL or error text is sent.

        Args:
            prefix: Where the two endpoints are mounted.
            timeout: The deadline of each ping, in seconds.

        Example:
            >>> app.include_router(db.health_router())
        """
        router = APIRouter(prefix=prefix, tags=["health"])
        prober, config = self._prober, self._database.config

        @router.get("/live")
        async def live() -> dict[str, str]:
            return {"status": "ok"}

        @router.get("/ready")
        async def ready() -> JSONResponse:
            results = await prober.ready(config, timeout)
            is_ok = all(result.ok for result in results)
            return JSONResponse(
                {
                    "status": "ok" if is_ok else "unavailable",
                    "latency_ms": round(1000 * max(result.latency for result in results), 1),
                },
                status_code=200 if is_ok else 503,
                headers={"Cache-Control": "no-store"},
            )

        return router
