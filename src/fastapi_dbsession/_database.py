"""Own one database's engines, session factories and pool gate: the :class:`Database`.

Everything below the FastAPI layer that needs "the database" takes a ``Database``: the unit of
work runtime, the request session dependencies, ``@transactional`` and ``db.transaction()``.
``DatabaseSessionManager`` owns one and delegates to it. It knows nothing of FastAPI.

While a test isolates the database (``fastapi_dbsession.testing``), a :class:`Binding` is
attached and every new session comes from it instead of the session factories.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio.to_thread
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

from . import _compat, _engines, _urls
from ._capacity import CapacityGate
from ._config import Config
from ._sessions import guarded_async_session_class, guarded_session_class
from ._watchers import Watchers
from .errors import ConfigurationError, DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class Binding(Protocol):
    """Where new sessions come from while a test isolates the database.

    ``fastapi_dbsession.testing.TestBinding`` implements it: every session joins the test's
    outer transaction, which is rolled back when the test ends.
    """

    def session(self) -> Session:
        """A sync session inside the test's outer transaction."""
        ...

    async def async_session(self) -> AsyncSession:
        """An AsyncSession inside the outer transaction of the running event loop."""
        ...

    async def async_close_loop(self) -> None:
        """Roll back and close the running loop's outer connection (the app shuts down)."""
        ...


class Database:
    """The engines, session factories and capacity gate of one database, created lazily."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._async_engine: AsyncEngine | None = None
        self._sync_factory: sessionmaker[Session] | None = None
        self._async_factory: async_sessionmaker[AsyncSession] | None = None
        self._gate: CapacityGate | None = None
        self._gate_built = False
        self._binding: Binding | None = None
        self.watchers = Watchers(config.observability, config.name)
        """Query recording, hold-time watches, engine hooks, gate observers (all opt-in)."""

    def __repr__(self) -> str:
        return f"DatabaseSessionManager({self._config.describe()})"

    @property
    def config(self) -> Config:
        """The frozen configuration (URLs, options, classes, default commit policy)."""
        return self._config

    # -- engines -------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The sync engine, created on first use."""
        return self._engine or self._once("_engine", self._create_engine)

    @property
    def async_engine(self) -> AsyncEngine:
        """The asyncio engine, created on first use."""
        return self._async_engine or self._once("_async_engine", self._create_async_engine)

    def _once(self, attribute: str, create: Callable[[], _T]) -> _T:
        """Create what ``attribute`` holds unless another thread just did."""
        with self._lock:
            value: _T | None = getattr(self, attribute)
            if value is None:
                value = create()
                setattr(self, attribute, value)
        return value

    def _create_engine(self) -> Engine:
        url = self._require(self._config.url, side="sync")
        engine = _engines.create(
            sqlalchemy.create_engine,  # looked up now: instrumentation may have wrapped it
            url,
            self.watchers.engine_options(self._config.engine_options, is_async=False),
            side="sync",
            pgbouncer=self._config.pgbouncer,
        )
        self.watchers.engine_created(engine)
        return engine

    def _create_async_engine(self) -> AsyncEngine:
        url = self._require(self._config.async_url, side="async")
        create_async_engine = _compat.require_asyncio().create_async_engine
        options = self._config.async_engine_options
        if self._config.unshared_connect_args:
            logger.warning(
                "engine_options['connect_args'] (%s) are for %s and were not given to the %s "
                "async engine: pass the async driver's own in async_engine_options",
                ", ".join(self._config.unshared_connect_args),
                self._config.url.get_driver_name() if self._config.url else "the sync driver",
                url.get_driver_name(),
            )
        engine: AsyncEngine = _engines.create(
            create_async_engine,
            url,
            self.watchers.engine_options(options, is_async=True),
            side="async",
            pgbouncer=self._config.pgbouncer,
        )
        self.watchers.engine_created(engine.sync_engine)
        return engine

    def add_engine_hook(self, hook: Callable[[Engine], object]) -> None:
        """Call ``hook`` with every engine from now on (re-created ones too), and those alive."""
        with self._lock:
            self.watchers.engine_hooks.append(hook)
            alive = self.live_engines()
        for _, engine in alive:
            hook(engine)

    def live_engines(self) -> list[tuple[str, Engine]]:
        """``("sync", engine)`` / ``("async", its sync engine)`` for the engines created so far."""
        alive: list[tuple[str, Engine]] = []
        if self._engine is not None:
            alive.append(("sync", self._engine))
        if self._async_engine is not None:
            alive.append(("async", self._async_engine.sync_engine))
        return alive

    def _require(self, url: URL | None, *, side: str) -> URL:
        if url is not None:
            return url
        if side == "sync":
            raise ConfigurationError(
                f"{self!r} has no sync URL and none can be derived from its async URL. Pass "
                "url= (e.g. postgresql+psycopg://...) or use db.async_session / "
                "db.async_transaction()."
            )
        raise ConfigurationError(
            f"{self!r} has no async URL and none can be derived from its sync URL. Pass "
            "async_url= (e.g. postgresql+asyncpg://...) or use the sync API "
            "(db.session / db.transaction())."
        )

    def dialect_name(self, *, is_async: bool) -> str:
        """The SQLAlchemy dialect of one side (``"postgresql"``, ``"mysql"``, ...)."""
        engine = self.async_engine if is_async else self.engine
        return engine.dialect.name

    def pool_capacity(self, *, is_async: bool) -> int | None:
        """How many connections one side can hold at once (None: unbounded, or a test's one)."""
        if self._binding is not None:
            return None  # every session shares the test's one connection
        engine = self.async_engine.sync_engine if is_async else self.engine
        return _compat.pool_capacity(engine.pool)

    def capacity_gate(self) -> CapacityGate | None:
        """The gate sync request sessions pass before the endpoint runs (None: unbounded)."""
        if not self._gate_built:
            engine = self.engine
            capacity = _compat.pool_capacity(engine.pool)
            timeout = _compat.pool_timeout(engine.pool)
            gate = None
            if capacity is not None:
                gate = CapacityGate(
                    capacity,
                    timeout,
                    f"No database connection became free within {timeout:g}s: all {capacity} "
                    f"connections of the pool for {_urls.render(engine.url)} are held by "
                    "other requests. Raise pool_size / max_overflow in engine_options, lower the "
                    "number of concurrent requests, or look for requests that hold their "
                    "session for long (slow queries, calls to other services).",
                )
            self._gate, self._gate_built = gate, True
        return self._gate

    def gate_waiting(self) -> int:
        """Requests waiting at the capacity gate now (0 before the gate exists)."""
        gate = self._gate
        return 0 if gate is None else gate.waiting

    # -- sessions ------------------------------------------------------------------------

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """The sync sessionmaker (the user's session class, with the library's guards)."""
        factory = self._sync_factory
        if factory is None:
            factory = sessionmaker(
                bind=self.engine,
                class_=guarded_session_class(self._config.session_class),
                **self._config.session_options,
            )
            self._sync_factory = factory
        return factory

    @property
    def async_session_factory(self) -> async_sessionmaker[AsyncSession]:
        """The async sessionmaker (``expire_on_commit=False`` unless asked otherwise)."""
        factory = self._async_factory
        if factory is None:
            asyncio_ext = _compat.require_asyncio()
            base = self._config.async_session_class or asyncio_ext.AsyncSession
            factory = asyncio_ext.async_sessionmaker(
                bind=self.async_engine,
                class_=guarded_async_session_class(base),
                **self._config.async_session_options,
            )
            self._async_factory = factory
        return factory

    def new_session(self, *, autocommit: bool = False) -> Session:
        """A new sync session (inside the test's outer transaction while one is bound).

        Args:
            autocommit: Every statement commits at once: units that run without a transaction.
        """
        if self._binding is not None:
            return self._binding.session()
        if autocommit:
            session = self.session_factory(
                bind=self.engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        else:
            session = self.session_factory()
        self.watchers.session_created(session)
        return session

    async def async_new_session(self, *, autocommit: bool = False) -> AsyncSession:
        """Async twin of :meth:`new_session`."""
        if self._binding is not None:
            return await self._binding.async_session()
        if autocommit:
            session = self.async_session_factory(
                bind=self.async_engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        else:
            session = self.async_session_factory()
        self.watchers.session_created(session.sync_session)
        return session

    # -- test binding --------------------------------------------------------------------

    @property
    def is_bound(self) -> bool:
        """Whether a test's binding currently supplies every new session."""
        return self._binding is not None

    def bind(self, binding: Binding) -> None:
        """Make ``binding`` the source of every new session (``fastapi_dbsession.testing``)."""
        if self._binding is not None:
            raise ConfigurationError(
                f"{self!r} is already isolated by an enclosing isolated() / db_isolation fixture."
            )
        self._binding = binding

    def unbind(self) -> None:
        """Go back to the session factories."""
        self._binding = None

    # -- lifetime ------------------------------------------------------------------------

    def dispose(self) -> None:
        """Close every pooled connection of the sync engine (it is recreated on next use)."""
        with self._lock:
            engine, self._engine, self._sync_factory = self._engine, None, None
            self._gate, self._gate_built = None, False
        if engine is not None:
            engine.dispose()
            logger.info("disposed sync engine for %s", _urls.render(engine.url))

    async def async_dispose(self) -> None:
        """Close every pooled connection of the async engine (it is recreated on next use)."""
        engine = self._take_async_engine()
        if engine is not None:
            await engine.dispose()
            logger.info("disposed async engine for %s", _urls.render(engine.url))

    def _take_async_engine(self) -> AsyncEngine | None:
        with self._lock:
            engine, self._async_engine, self._async_factory = self._async_engine, None, None
        return engine

    def repoint(self, url: URL | None, async_url: URL | None) -> None:
        """Point at other databases (a test database), disposing the engines it replaces."""
        self.dispose()
        engine = self._take_async_engine()
        if engine is not None:
            _dispose_outside_loop(engine)
        self._config = self._config.with_urls(url, async_url)

    def check(self) -> None:
        """Connect and run ``SELECT 1`` on the sync side.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
        """
        engine = self.engine
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DatabaseUnavailableError:
            raise
        except Exception as exc:
            raise _unavailable(engine.url, exc) from exc

    async def async_check(self) -> None:
        """Async twin of :meth:`check`."""
        engine = self.async_engine
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except DatabaseUnavailableError:
            raise
        except Exception as exc:
            raise _unavailable(engine.url, exc) from exc

    async def startup(self) -> None:
        """Check the sides whose URL was given (a derived twin is created on first use)."""
        if self._binding is not None:
            return  # a test's outer transaction has proven the connection
        if self._config.url_given:
            await anyio.to_thread.run_sync(self.check)
        if self._config.async_url_given:
            await self.async_check()

    async def shutdown(self) -> None:
        """Dispose both engines; under a test's binding, only close this loop's connection."""
        if self._binding is not None:
            await self._binding.async_close_loop()  # the test owns the engines
            return
        await self.async_dispose()
        await anyio.to_thread.run_sync(self.dispose)


def _dispose_outside_loop(engine: AsyncEngine) -> None:
    """Dispose an async engine from sync code: on a loop of our own if none is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(engine.dispose())
    else:  # cannot block this loop: drop the pool; its connections close as they are freed
        engine.sync_engine.dispose(close=False)
    logger.info("disposed async engine for %s", _urls.render(engine.url))


def _unavailable(url: URL, exc: BaseException) -> DatabaseUnavailableError:
    reason = _urls.mask_text(str(getattr(exc, "orig", None) or exc), url).strip().splitlines()
    return DatabaseUnavailableError(
        f"Cannot reach the database at {_urls.render(url)} at startup: "
        f"{type(exc).__name__}: {reason[0] if reason else ''}. Check that the server is "
        "running and that host, port, user, password and database name in the URL are right."
    )
