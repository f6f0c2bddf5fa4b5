"""Ask the database whether it answers, within a deadline of our own: pings and the startup check.

A database that accepts the TCP connection and never answers (a frozen server, a full accept
queue behind a load balancer, a half-open network path) makes a driver wait for its own
timeout, often minutes. Every question asked here therefore has a deadline that does not
depend on the driver: the async side runs under ``asyncio.timeout``; the sync side runs in a
daemon thread that the caller stops waiting for when the deadline passes.

Pings (``db.ping()``, ``db.async_ping()``, the readiness probe) use a connection of their own,
opened for the ping and closed after it (a ``NullPool`` engine on the same URL and connect
arguments): a probe never waits behind requests for a pooled connection, and a probe stuck on
a frozen server holds no connection a request could use. At most one sync ping is in flight:
while a stuck one has not returned, the next ones answer "unavailable" at once instead of
starting more threads. SQLite is pinged through the app's own engine (an in-memory database
exists only there).

The startup check (``lifespan``) uses the app's engines, so the pool starts warm, and retries
with exponential backoff for databases that come up after the app (docker compose,
Kubernetes), then raises :class:`DatabaseUnavailableError` naming host and port.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from . import _compat, _engines, _urls
from .errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._config import Config
    from ._database import Database

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
_FIRST_DELAY, _MAX_DELAY = 0.5, 5.0


@dataclass(frozen=True, slots=True)
class PingResult:
    """What one ping found: ``db.ping()`` and ``await db.async_ping()`` return it.

    Attributes:
        status: ``"ok"`` or ``"unavailable"``.
        latency: Seconds from the start of the ping to its answer (or to the deadline).
        error: Why it is unavailable, for logs (password masked); None when ok. The health
            router never sends it to clients.
    """

    status: Literal["ok", "unavailable"]
    latency: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the database answered ``SELECT 1`` within the deadline."""
        return self.status == "ok"


def address(url: URL) -> str:
    """``host:port`` of a server URL (default port filled in), or the file of a SQLite one."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.database or ":memory:"
    port = url.port or _DEFAULT_PORTS.get(backend)
    host = url.host or "localhost"
    return f"{host}:{port}" if port else host


def _describe(error: BaseException, url: URL) -> str:
    """One line for logs: the driver's error (not our wrapper around it), secrets masked."""
    if isinstance(error, DatabaseUnavailableError) and error.__cause__ is not None:
        error = error.__cause__  # the engine's connect already wrapped the driver's error
    text = str(getattr(error, "orig", None) or error)
    reason = _urls.mask_text(text, url).strip().splitlines()
    return f"{type(error).__name__}: {reason[0] if reason else ''}".rstrip(": ")


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def _async_select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def _start_thread(engine: Engine, outcome: list[BaseException | None]) -> threading.Thread:
    def run() -> None:
        try:
            _select_one(engine)
        except BaseException as exc:  # reported to the caller, never raised in the thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, name="fastapi_dbsession-ping", daemon=True)
    thread.start()
    return thread


def _timed_out(timeout: float) -> TimeoutError:
    return TimeoutError(f"no answer within {timeout:g}s")


def _wait_for(
    thread: threading.Thread, outcome: list[BaseException | None], timeout: float
) -> BaseException | None:
    """Wait for ``thread`` up to ``timeout``: its error, None on success, TimeoutError if late."""
    thread.join(timeout)
    if not outcome:
        return _timed_out(timeout)
    return outcome[0]


async def _async_attempt(engine: AsyncEngine, deadline: float) -> BaseException | None:
    try:
        async with asyncio.timeout(deadline):
            await _async_select_one(engine)
    except TimeoutError:
        return _timed_out(deadline)
    except Exception as exc:
        return exc
    return None


def _result(started: float, error: BaseException | None, url: URL) -> PingResult:
    latency = time.monotonic() - started
    if error is None:
        return PingResult("ok", latency)
    return PingResult("unavailable", latency, _describe(error, url))


class Prober:
    """Pings and the startup check of one :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._pending: threading.Thread | None = None
        self._engines: dict[tuple[bool, URL], Any] = {}

    def _probe_engine(self, *, is_async: bool) -> Any:
        """The engine pings use: own connections (NullPool), same URL and connect arguments."""
        database = self._database
        config = database.config
        url = config.async_url if is_async else config.url
        if url is None or url.get_backend_name() == "sqlite":  # None: the engine explains
            return database.async_engine if is_async else database.engine
        key = (is_async, url)
        probe = self._engines.get(key)
        if probe is None:
            options = config.async_engine_options if is_async else config.engine_options
            arguments: dict[str, Any] = {
                "poolclass": NullPool,
                "pool_pre_ping": False,  # a new connection each time: nothing to check
                "connect_args": dict(options.get("connect_args", {})),
            }
            factory: Callable[..., Any] = (
                _compat.require_asyncio().create_async_engine if is_async else create_engine
            )
            side = "async" if is_async else "sync"
            probe = _engines.create(factory, url, arguments, side=side, pgbouncer=config.pgbouncer)
            self._engines = {key: probe}  # the URL changed (a test database): forget the old
        return probe

    def ping(self, timeout: float) -> PingResult:
        """``SELECT 1`` on a connection of its own, answered within ``timeout`` seconds."""
        started = time.monotonic()
        engine = self._probe_engine(is_async=False)
        outcome: list[BaseException | None] = []
        with self._lock:
            if self._pending is not None and self._pending.is_alive():
                stuck = TimeoutError("the previous ping has not returned yet")
                return _result(started, stuck, engine.url)
            thread = self._pending = _start_thread(engine, outcome)
        return _result(started, _wait_for(thread, outcome, timeout), engine.url)

    async def async_ping(self, deadline: float) -> PingResult:
        """Async twin of :meth:`ping`."""
        started = time.monotonic()
        engine = self._probe_engine(is_async=True)
        return _result(started, await _async_attempt(engine, deadline), engine.url)

    async def ready(self, config: Config, deadline: float) -> list[PingResult]:
        """Ping the sides whose URL was given (the readiness probe)."""
        results = []
        if config.url_given:
            results.append(await anyio.to_thread.run_sync(self.ping, deadline))
        if config.async_url_given:
            results.append(await self.async_ping(deadline))
        return results

    async def startup(self) -> None:
        """Check the sides whose URL was given, retrying with backoff; then give up loudly.

        Raises:
            DatabaseUnavailableError: A side did not answer after ``startup_retries`` retries.
        """
        database = self._database
        if database.is_bound:
            return  # a test's outer transaction has proven the connection
        config = database.config
        retries, timeout = config.startup_retries, config.startup_timeout
        for is_async, given in ((False, config.url_given), (True, config.async_url_given)):
            if given:
                await self._start_side(is_async=is_async, retries=retries, deadline=timeout)

    async def _start_side(self, *, is_async: bool, retries: int, deadline: float) -> None:
        database = self._database
        url = (database.async_engine if is_async else database.engine).url
        started = time.monotonic()
        delay = _FIRST_DELAY
        for attempt in range(retries + 1):
            error: BaseException | None
            if is_async:
                error = await _async_attempt(database.async_engine, deadline)
            else:
                error = await anyio.to_thread.run_sync(
                    self._sync_attempt, database.engine, deadline
                )
            if error is None:
                return
            if attempt == retries:
                raise DatabaseUnavailableError(
                    f"Cannot reach the database at {address(url)} ({_urls.render(url)}) at "
                    f"startup after {attempt + 1} attempt(s) over "
                    f"{time.monotonic() - started:.1f}s: {_describe(error, url)}. Check that the "
                    "server is running and reachable from here and that host, port, user, "
                    "password and database name are right; for a database that starts after "
                    "the app, raise startup_retries."
                ) from error
            logger.warning(
                "database at %s not reachable at startup (attempt %d of %d): %s; retrying in %.1fs",
                address(url),
                attempt + 1,
                retries + 1,
                _describe(error, url),
                delay,
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    @staticmethod
    def _sync_attempt(engine: Engine, timeout: float) -> BaseException | None:
        outcome: list[BaseException | None] = []
        return _wait_for(_start_thread(engine, outcome), outcome, timeout)
