"""Own one database's engines, session factories and pool gate: the :class:`Database`.

Everything below the FastAPI layer that needs "the database" takes a ``Database``: the unit of
work runtime, the request session dependencies, ``@transactional`` and ``db.transaction()``.
``DatabaseSessionManager`` owns one and delegates to it. It knows nothing of FastAPI.

While a test isolates the database (``fastapi_dbsession.testing``), a :class:`Binding` is
attached and every new session comes from it instead of the session factories.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio.to_thread
import sqlalchemy
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

from . import _compat, _engines, _pressure, _urls
from ._binds import BindSet
from ._capacity import CapacityGate
from ._config import Config
from ._pressure import PoolStatus
from ._replicas import ReplicaSet
from ._sessions import guarded_async_session_class, guarded_session_class
from ._watchers import Watchers
from .errors import ConfigurationError, PoolTimeoutError

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
        self.config = config  # frozen: URLs, options, classes (a plain attribute: hot path)
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._async_engine: AsyncEngine | None = None
        self._sync_factory: sessionmaker[Session] | None = None
        self._async_factory: async_sessionmaker[AsyncSession] | None = None
        self._gate: CapacityGate | None = None
        self._gate_built = False
        self._binding: Binding | None = None
        self._others = _OtherEngines(config, self._engine_created)
        _ALL.add(self)
        self.watchers = Watchers(config.observability, config.name)  # all opt-in

    def __repr__(self) -> str:
        return f"DatabaseSessionManager({self.config.describe()})"

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
        if self.config.engine is not None:
            return self.config.engine  # the user's, used as it is
        url = _require(self, self.config.url, side="sync")
        engine = _engines.create(
            sqlalchemy.create_engine,  # looked up now: instrumentation may have wrapped it
            url,
            self.watchers.engine_options(self.config.engine_options, is_async=False),
            side="sync",
            pgbouncer=self.config.pgbouncer,
            timeouts=self.config.timeouts,
        )
        self._engine_created(engine, side="sync")
        return engine

    def _create_async_engine(self) -> AsyncEngine:
        if self.config.async_engine is not None:
            return self.config.async_engine
        url = _require(self, self.config.async_url, side="async")
        create_async_engine = _compat.require_asyncio().create_async_engine
        options = self.config.async_engine_options
        if self.config.unshared_connect_args:
            logger.warning(
                "engine_options['connect_args'] (%s) are for %s and were not given to the %s "
                "async engine: pass the async driver's own in async_engine_options",
                ", ".join(self.config.unshared_connect_args),
                self.config.url.get_driver_name() if self.config.url else "the sync driver",
                url.get_driver_name(),
            )
        engine: AsyncEngine = _engines.create(
            create_async_engine,
            url,
            self.watchers.engine_options(options, is_async=True),
            side="async",
            pgbouncer=self.config.pgbouncer,
            timeouts=self.config.timeouts,
        )
        self._engine_created(engine.sync_engine, side="async")
        return engine

    def _engine_created(self, engine: Engine, *, side: str) -> None:
        """Install what watches a new engine (the sync one, or an async engine's sync one)."""
        self.watchers.engine_created(engine)
        threshold = self.config.pool_saturation_warning
        if threshold is not None:
            _pressure.install_saturation_warning(engine, threshold, side=side)

    def add_engine_hook(self, hook: Callable[[Engine], object]) -> None:
        """Call ``hook`` with every engine from now on (re-created ones too), and those alive."""
        with self._lock:
            self.watchers.engine_hooks.append(hook)
            alive = [self._engine, self._async_engine and self._async_engine.sync_engine]
        for engine in alive:
            if engine is not None:
                hook(engine)  # type: ignore[arg-type]

    def pool_status(self) -> dict[str, PoolStatus]:
        """A snapshot of each created engine's pool, by side (no engine is created for it)."""
        statuses: dict[str, PoolStatus] = {}
        if self._engine is not None:
            gate = self._gate if self._gate_built else None
            statuses["sync"] = _pressure.pool_status(self._engine.pool, side="sync", gate=gate)
        if self._async_engine is not None:
            pool = self._async_engine.sync_engine.pool
            statuses["async"] = _pressure.pool_status(pool, side="async", gate=None)
        return statuses

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
                gate = CapacityGate(capacity, timeout, self._pool_timeout_message(engine))
            self._gate, self._gate_built = gate, True
        return self._gate

    def pool_timeout_error(self, *, is_async: bool) -> PoolTimeoutError:
        """Our error for a pool checkout that timed out on one side (SQLAlchemy's TimeoutError)."""
        engine = self.async_engine.sync_engine if is_async else self.engine
        return PoolTimeoutError(self._pool_timeout_message(engine))

    @staticmethod
    def _pool_timeout_message(engine: Engine) -> str:
        capacity = _compat.pool_capacity(engine.pool)
        held = "all" if capacity is None else f"all {capacity}"
        return (
            f"No database connection became free within {_compat.pool_timeout(engine.pool):g}s: "
            f"{held} connections of the pool for {_urls.render(engine.url)} are held by "
            "other requests. Raise pool_size / max_overflow in engine_options, lower the "
            "number of concurrent requests, or look for requests that hold their session for "
            "long (slow queries, calls to other services)."
        )

    # -- sessions ------------------------------------------------------------------------

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """The sync sessionmaker (the user's session class, with the library's guards)."""
        factory = self._sync_factory
        if factory is None:
            factory = sessionmaker(
                bind=self.engine,
                class_=guarded_session_class(self.config.session_class, routed=self._others.routes),
                **self.config.session_options,
            )
            self._sync_factory = factory
        return factory

    @property
    def async_session_factory(self) -> async_sessionmaker[AsyncSession]:
        """The async sessionmaker (``expire_on_commit=False`` unless asked otherwise)."""
        factory = self._async_factory
        if factory is None:
            asyncio_ext = _compat.require_asyncio()
            base = self.config.async_session_class or asyncio_ext.AsyncSession
            factory = asyncio_ext.async_sessionmaker(
                bind=self.async_engine,
                class_=guarded_async_session_class(base, routed=self._others.routes),
                **self.config.async_session_options,
            )
            self._async_factory = factory
        return factory

    def new_session(self, *, autocommit: bool = False, read: bool = False) -> Session:
        """A new sync session (inside the test's outer transaction while one is bound).

        Args:
            autocommit: Every statement commits at once: units that run without a transaction.
            read: Read-only work: with read replicas, its reads go to one of them.
        """
        if self._binding is not None:
            return self._binding.session()
        if autocommit:
            session = self.session_factory(
                bind=self.engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        else:
            session = self.session_factory()
            if self._others.routes:  # replicas or binds: nothing to do without them
                self._others.route(session, read=read, key=id(self), is_async=False)
        if self.watchers.hold_threshold is not None:
            self.watchers.session_created(session)
        return session

    async def async_new_session(
        self, *, autocommit: bool = False, read: bool = False
    ) -> AsyncSession:
        """Async twin of :meth:`new_session`."""
        if self._binding is not None:
            return await self._binding.async_session()
        if autocommit:
            session = self.async_session_factory(
                bind=self.async_engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        else:
            session = self.async_session_factory()
            if self._others.routes:
                self._others.route(session.sync_session, read=read, key=id(self), is_async=True)
        if self.watchers.hold_threshold is not None:
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

    def dispose(self, *, given_too: bool = True) -> None:
        """Close the sync engine's pooled connections (``given_too``: a user's engine too)."""
        with self._lock:
            engine, self._engine, self._sync_factory = self._engine, None, None
            self._gate, self._gate_built = None, False
        if engine is not None and (given_too or not self.config.is_given(engine)):
            engine.dispose()
            logger.info("disposed sync engine for %s", _urls.render(engine.url))
        self._others.dispose()

    async def async_dispose(self, *, given_too: bool = True) -> None:
        """Close every pooled connection of the async engine (it is recreated on next use)."""
        engine = self._take_async_engine()
        if engine is not None and (given_too or not self.config.is_given(engine)):
            await engine.dispose()
            logger.info("disposed async engine for %s", _urls.render(engine.url))
        await self._others.async_dispose()

    def _take_async_engine(self) -> AsyncEngine | None:
        with self._lock:
            engine, self._async_engine, self._async_factory = self._async_engine, None, None
        return engine

    def repoint(self, url: URL | None, async_url: URL | None) -> None:
        """Point at other databases (a test database), disposing the engines it replaces."""
        self.reconfigure(self.config.with_urls(url, async_url))

    def reconfigure(self, config: Config) -> None:
        """Use ``config`` from now on (other URLs or engines); dispose the engines we built."""
        self.dispose(given_too=False)
        engine = self._take_async_engine()
        if engine is not None and not self.config.is_given(engine):
            _dispose_outside_loop(engine)
        for other in self._others.take_async_engines():
            _dispose_outside_loop(other)
        self.config = config
        self._others = _OtherEngines(config, self._engine_created)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pooled connections, never touching them.

        SQLAlchemy's recipe for pre-fork servers (``engine.dispose(close=False)``): the child
        starts with empty pools; the parent's connections stay the parent's. The capacity gate
        counted the parent's requests, so the child gets a new one.
        """
        if self._engine is not None:
            _compat.forget_parent_connections(self._engine)
        if self._async_engine is not None:
            _compat.forget_parent_connections(self._async_engine.sync_engine)
        self._others.after_fork()
        self._gate, self._gate_built = None, False

    async def shutdown(self) -> None:
        """Dispose both engines; under a test's binding, only close this loop's connection."""
        if self._binding is not None:
            await self._binding.async_close_loop()  # the test owns the engines
            return
        given_too = self.config.dispose_engines
        await self.async_dispose(given_too=given_too)
        await anyio.to_thread.run_sync(lambda: self.dispose(given_too=given_too))


def _require(database: Database, url: URL | None, *, side: str) -> URL:
    """``url``, or the error that says which argument is missing."""
    if url is not None:
        return url
    if side == "sync":
        raise ConfigurationError(
            f"{database!r} has no sync URL and none can be derived from its async side. Pass "
            "url= (e.g. postgresql+psycopg://...) or engine=, or use db.async_session / "
            "db.async_transaction()."
        )
    raise ConfigurationError(
        f"{database!r} has no async URL and none can be derived from its sync side. Pass "
        "async_url= (e.g. postgresql+asyncpg://...) or async_engine=, or use the sync API "
        "(db.session / db.transaction())."
    )


class _OtherEngines:
    """The engines a Database makes besides its own: read replicas and binds (lazily)."""

    def __init__(self, config: Config, engine_created: Callable[..., None]) -> None:
        create = functools.partial(_create_other, config, engine_created)
        self.replicas = ReplicaSet(config.replica_urls, functools.partial(create, kind="replica"))
        self.binds = None
        if config.binds:
            owner = f"DatabaseSessionManager({config.describe()})"
            self.binds = BindSet(
                config.binds,
                functools.partial(create, kind="bind"),
                owner,
                name=config.name,
                twophase=config.twophase,
            )
        self.routes = bool(self.replicas) or self.binds is not None
        """Whether sessions need a router or a bind look-up (else they route nothing)."""

    def route(self, session: Session, *, read: bool, key: int, is_async: bool) -> None:
        """Give a new session its replica router and its bind look-up."""
        self.replicas.route(session, read=read, key=key)
        if self.binds is not None:
            self.binds.attach(session, is_async=is_async)

    def dispose(self) -> None:
        self.replicas.dispose()
        for engine in self.binds.take(is_async=False) if self.binds is not None else ():
            engine.dispose()
            logger.info("disposed sync engine for %s", _urls.render(engine.url))

    async def async_dispose(self) -> None:
        await self.replicas.async_dispose()
        for engine in self.binds.take_async() if self.binds is not None else ():
            await engine.dispose()
            logger.info("disposed async engine for %s", _urls.render(engine.url))

    def take_async_engines(self) -> list[AsyncEngine]:
        binds = self.binds.take_async() if self.binds is not None else []
        return self.replicas.take_async_engines() + binds

    def after_fork(self) -> None:
        self.replicas.after_fork()
        if self.binds is not None:
            self.binds.after_fork()


def _create_other(
    config: Config, engine_created: Callable[..., None], url: URL, *, is_async: bool, kind: str
) -> Engine:
    """A replica's or bind's engine, made with the primary's options for its side."""
    if is_async:
        factory = _compat.require_asyncio().create_async_engine
        options, side = config.async_engine_options, "async"
    else:
        factory, options, side = sqlalchemy.create_engine, config.engine_options, "sync"
    engine = _engines.create(
        factory, url, options, side=side, pgbouncer=config.pgbouncer, timeouts=config.timeouts
    )
    sync_engine: Engine = getattr(engine, "sync_engine", engine)
    engine_created(sync_engine, side=f"{side} {kind}")
    return sync_engine


_ALL: weakref.WeakSet[Database] = weakref.WeakSet()
"""Every live Database, so that a forked child can let go of the parent's connections."""


def _after_fork_in_child() -> None:
    for database in list(_ALL):
        database.after_fork()


if hasattr(os, "register_at_fork"):  # POSIX: gunicorn/uvicorn workers fork after import
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _dispose_outside_loop(engine: AsyncEngine) -> None:
    """Dispose an async engine from sync code: on a loop of our own if none is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(engine.dispose())
    else:  # cannot block this loop: drop the pool; its connections close as they are freed
        engine.sync_engine.dispose(close=False)
    logger.info("disposed async engine for %s", _urls.render(engine.url))
