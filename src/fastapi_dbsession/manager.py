"""Own a database's engines, session factories and lifespan: ``DatabaseSessionManager``."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from . import _compat, _engines, _urls, dependencies, transactions
from ._capacity import CapacityGate
from ._sessions import guarded_async_session_class, guarded_session_class
from ._units import Frame, active_frame, async_frames, innermost_session, sync_frames
from .decorators import P, R, TransactionalDecorator, decorate, make_options
from .dependencies import CommitPolicy
from .errors import ConfigurationError, DatabaseUnavailableError, NoActiveTransactionError
from .propagation import Propagation

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from .testing._binding import TestBinding

logger = logging.getLogger(__name__)

_NO_GATE: Any = object()


class DatabaseSessionManager:
    """Own the engines and sessions of one database for a FastAPI app.

    Build one per database at import time, hand ``db.lifespan`` to FastAPI, and ask for the
    request's session with ``Depends(db.session)`` (sync) or ``Depends(db.async_session)``
    (async). Engines are created on first use, so an app that only uses one side never needs
    the other side's driver.

    Args:
        url: The sync database URL (``str`` or ``sqlalchemy.URL``). An asyncio URL given here
            is treated as ``async_url``.
        async_url: The asyncio URL. When omitted it is derived from ``url`` for known driver
            pairs (sqlite → aiosqlite, postgresql+psycopg → psycopg async, postgresql →
            asyncpg, mysql+pymysql → aiomysql).
        engine_options: Keyword arguments for ``create_engine``; they override the safe
            defaults (``pool_pre_ping=True``; SQLite: ``check_same_thread=False``,
            ``StaticPool`` for ``:memory:``, foreign keys on).
        async_engine_options: The same for ``create_async_engine`` (default: ``engine_options``).
        session_options: Keyword arguments for the sessionmakers (both sides).
        async_session_options: Overrides for the async sessionmaker only; async sessions
            default to ``expire_on_commit=False``.
        session_class: The sync session class, e.g. ``sqlmodel.Session``.
        async_session_class: The async session class, e.g.
            ``sqlmodel.ext.asyncio.session.AsyncSession``.
        commit_policy: What request sessions do when the endpoint succeeds: ``"commit"``
            (default), ``"manual"`` (never commit for you) or ``"read_only"`` (always roll
            back). Override it per route with ``Depends(db.commit_policy(...))``.

    Raises:
        ConfigurationError: No URL, a malformed URL, options of the wrong type.

    Example:
        >>> db = DatabaseSessionManager("sqlite:///./app.db")
        >>> app = FastAPI(lifespan=db.lifespan)
        >>> @app.post("/items")
        ... def create(item: ItemIn, session: Session = Depends(db.session)) -> ItemOut: ...
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        async_url: str | URL | None = None,
        engine_options: Mapping[str, Any] | None = None,
        async_engine_options: Mapping[str, Any] | None = None,
        session_options: Mapping[str, Any] | None = None,
        async_session_options: Mapping[str, Any] | None = None,
        session_class: type[Session] = Session,
        async_session_class: type[AsyncSession] | None = None,
        commit_policy: CommitPolicy = "commit",
    ) -> None:
        sync_url = None if url is None else _urls.parse(url, argument="url")
        given_async = None if async_url is None else _urls.parse(async_url, argument="async_url")
        if sync_url is not None and _urls.is_async_driver(sync_url):
            if given_async is not None:
                raise ConfigurationError(
                    f"url={_urls.render(sync_url)!r} names an asyncio driver, and async_url is "
                    "set too. Pass a sync driver as url (e.g. postgresql+psycopg) and the "
                    "asyncio one as async_url."
                )
            sync_url, given_async = None, sync_url
        if sync_url is None and given_async is None:
            raise ConfigurationError(
                "DatabaseSessionManager needs a database URL: "
                'DatabaseSessionManager("sqlite:///./app.db"), '
                'DatabaseSessionManager(async_url="postgresql+asyncpg://app@db/app"), or '
                "DatabaseSessionManager.from_env() with DATABASE_URL set."
            )
        self._url_given = sync_url is not None
        self._async_url_given = given_async is not None
        self._url = sync_url if sync_url is not None else _urls.sync_twin(given_async)  # type: ignore[arg-type]
        self._async_url = given_async if given_async is not None else _urls.async_twin(sync_url)  # type: ignore[arg-type]

        self._engine_options = _engines.check_options(engine_options, argument="engine_options")
        self._async_engine_options = (
            self._engine_options
            if async_engine_options is None
            else _engines.check_options(async_engine_options, argument="async_engine_options")
        )
        self._session_options = _engines.check_options(session_options, argument="session_options")
        self._async_session_options = {
            "expire_on_commit": False,
            **self._session_options,
            **_engines.check_options(async_session_options, argument="async_session_options"),
        }
        if not (isinstance(session_class, type) and issubclass(session_class, Session)):
            raise ConfigurationError(
                f"session_class must be a subclass of sqlalchemy.orm.Session, not "
                f"{session_class!r}."
            )
        self._session_class = session_class
        self._async_session_class = async_session_class
        self.default_commit_policy: CommitPolicy = dependencies.check_policy(
            commit_policy, argument="commit_policy"
        )

        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._async_engine: AsyncEngine | None = None
        self._sync_factory: sessionmaker[Session] | None = None
        self._async_factory: async_sessionmaker[AsyncSession] | None = None
        self._gate: CapacityGate | None = _NO_GATE
        self._binding: TestBinding | None = None  # set by fastapi_dbsession.testing
        self._policy_dependencies: dict[str, Callable[[HTTPConnection], Awaitable[None]]] = {}

        self.session: Callable[..., Awaitable[Session]] = dependencies.session_dependency(self)
        """Dependency giving the request's sync ``Session``: ``Depends(db.session)``."""
        self.async_session: Callable[..., Awaitable[AsyncSession]] = (
            dependencies.async_session_dependency(self)
        )
        """Dependency giving the request's ``AsyncSession``: ``Depends(db.async_session)``."""

    @classmethod
    def from_env(cls, prefix: str = "DATABASE_", **overrides: Any) -> DatabaseSessionManager:
        """Build a manager from environment variables.

        Reads ``{prefix}URL``, ``{prefix}ASYNC_URL``, ``{prefix}POOL_SIZE``,
        ``{prefix}MAX_OVERFLOW``, ``{prefix}POOL_TIMEOUT``, ``{prefix}POOL_RECYCLE``,
        ``{prefix}POOL_PRE_PING``, ``{prefix}ECHO`` and ``{prefix}COMMIT_POLICY``.

        Args:
            prefix: Prefix of the variable names.
            **overrides: Keyword arguments for the constructor; they win over the environment.

        Raises:
            ConfigurationError: No URL variable is set, or a number or flag does not parse.

        Example:
            >>> os.environ["DATABASE_URL"] = "sqlite:///./app.db"
            >>> db = DatabaseSessionManager.from_env()
        """
        env = os.environ
        options: dict[str, Any] = {}
        for suffix, option, parse in (
            ("POOL_SIZE", "pool_size", int),
            ("MAX_OVERFLOW", "max_overflow", int),
            ("POOL_TIMEOUT", "pool_timeout", float),
            ("POOL_RECYCLE", "pool_recycle", int),
            ("POOL_PRE_PING", "pool_pre_ping", _parse_bool),
            ("ECHO", "echo", _parse_bool),
        ):
            raw = env.get(prefix + suffix)
            if raw is None or raw == "":
                continue
            try:
                options[option] = parse(raw)
            except ValueError:
                raise ConfigurationError(
                    f"Environment variable {prefix}{suffix}={raw!r} is not a valid "
                    f"{'flag (true/false)' if parse is _parse_bool else parse.__name__}."
                ) from None
        kwargs: dict[str, Any] = {
            "url": env.get(prefix + "URL") or None,
            "async_url": env.get(prefix + "ASYNC_URL") or None,
        }
        if options:
            kwargs["engine_options"] = options
        if env.get(prefix + "COMMIT_POLICY"):
            kwargs["commit_policy"] = env[prefix + "COMMIT_POLICY"]
        kwargs.update(overrides)
        if kwargs["url"] is None and kwargs["async_url"] is None:
            raise ConfigurationError(
                f"DatabaseSessionManager.from_env() found neither {prefix}URL nor "
                f"{prefix}ASYNC_URL in the environment. Set one, e.g. "
                f"{prefix}URL=postgresql+psycopg://app@localhost/app."
            )
        return cls(**kwargs)

    def __repr__(self) -> str:
        shown = [
            f"{name}={_urls.render(url)!r}"
            for name, url in (("url", self._url), ("async_url", self._async_url))
            if url is not None
        ]
        return f"DatabaseSessionManager({', '.join(shown)})"

    # -- engines -------------------------------------------------------------------------

    @property
    def url(self) -> URL | None:
        """The sync URL (given or derived). Render it with ``hide_password=True``."""
        return self._url

    @property
    def async_url(self) -> URL | None:
        """The asyncio URL (given or derived)."""
        return self._async_url

    @property
    def engine(self) -> Engine:
        """The sync engine, created on first use.

        Raises:
            ConfigurationError: The manager has no sync URL.
            MissingDriverError: The driver is not installed.
        """
        engine = self._engine
        if engine is None:
            with self._lock:
                engine = self._engine
                if engine is None:
                    url = self._require(self._url, "sync")
                    engine = _engines.create(create_engine, url, self._engine_options, side="sync")
                    self._engine = engine
        return engine

    @property
    def async_engine(self) -> AsyncEngine:
        """The asyncio engine, created on first use.

        Raises:
            ConfigurationError: The manager has no asyncio URL.
            MissingDriverError: greenlet or the driver is not installed.
        """
        engine = self._async_engine
        if engine is None:
            with self._lock:
                engine = self._async_engine
                if engine is None:
                    url = self._require(self._async_url, "async")
                    asyncio_ext = _compat.require_asyncio()
                    engine = _engines.create(
                        asyncio_ext.create_async_engine,
                        url,
                        self._async_engine_options,
                        side="async",
                    )
                    self._async_engine = engine
        return engine

    def _require(self, url: URL | None, side: str) -> URL:
        if url is not None:
            return url
        if side == "sync":
            raise ConfigurationError(
                f"{self!r} has no sync URL and none can be derived from its async URL. Pass "
                "url= (e.g. postgresql+psycopg://...) or use db.async_session / "
                "db.async_transaction()."
            )
        raise ConfigurationError(
            f"{self!r} has no async URL and none can be derived from {_urls.render(self._url)!r}"  # type: ignore[arg-type]
            ". Pass async_url= (e.g. postgresql+asyncpg://...) or use the sync API "
            "(db.session / db.transaction())."
        )

    def _repoint(self, url: URL | None, async_url: URL | None) -> None:
        """Point the manager at other databases (the testing helpers' test database)."""
        self.dispose()
        self._async_engine = None
        self._async_factory = None
        self._url, self._async_url = url, async_url

    def dispose(self) -> None:
        """Close every pooled connection of the sync engine (it is recreated on next use)."""
        with self._lock:
            engine, self._engine, self._sync_factory = self._engine, None, None
            self._gate = _NO_GATE
        if engine is not None:
            engine.dispose()
            logger.info("disposed sync engine for %s", _urls.render(engine.url))

    async def async_dispose(self) -> None:
        """Close every pooled connection of the async engine (it is recreated on next use)."""
        with self._lock:
            engine, self._async_engine, self._async_factory = self._async_engine, None, None
        if engine is not None:
            await engine.dispose()
            logger.info("disposed async engine for %s", _urls.render(engine.url))

    # -- sessions ------------------------------------------------------------------------

    @property
    def _session_factory(self) -> sessionmaker[Session]:
        factory = self._sync_factory
        if factory is None:
            factory = sessionmaker(
                bind=self.engine,
                class_=guarded_session_class(self._session_class),
                **self._session_options,
            )
            self._sync_factory = factory
        return factory

    @property
    def _async_session_factory(self) -> async_sessionmaker[AsyncSession]:
        factory = self._async_factory
        if factory is None:
            asyncio_ext = _compat.require_asyncio()
            base = self._async_session_class or asyncio_ext.AsyncSession
            factory = asyncio_ext.async_sessionmaker(
                bind=self.async_engine,
                class_=guarded_async_session_class(base),
                **self._async_session_options,
            )
            self._async_factory = factory
        return factory

    def _sync_capacity_gate(self) -> CapacityGate | None:
        """The gate request sessions pass before a sync endpoint runs (None: unbounded pool)."""
        gate = self._gate
        if gate is _NO_GATE:
            pool = self.engine.pool
            capacity = _compat.pool_capacity(pool)
            timeout = _compat.pool_timeout(pool)
            gate = None
            if capacity is not None:
                gate = CapacityGate(
                    capacity,
                    timeout,
                    f"No database connection became free within {timeout:g}s: all {capacity} "
                    f"connections of the pool for {_urls.render(self.engine.url)} are held by "
                    "other requests. Raise pool_size / max_overflow in engine_options, lower the "
                    "number of concurrent requests, or look for requests that hold their "
                    "session for long (slow queries, calls to other services).",
                )
            self._gate = gate
        return gate

    def _new_session(self, *, autocommit: bool = False) -> Session:
        """A new sync session (inside the test's outer transaction while one is bound)."""
        if self._binding is not None:
            return self._binding.session()
        if autocommit:  # every statement commits at once: units without a transaction
            return self._session_factory(
                bind=self.engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        return self._session_factory()

    async def _anew_session(self, *, autocommit: bool = False) -> AsyncSession:
        """Async twin of :meth:`_new_session`."""
        if self._binding is not None:
            return await self._binding.async_session()
        if autocommit:
            bind: Any = self.async_engine.execution_options(isolation_level="AUTOCOMMIT")
            return self._async_session_factory(bind=bind)
        return self._async_session_factory()

    def _dialect_name(self, *, is_async: bool) -> str:
        engine = self.async_engine if is_async else self.engine
        return engine.dialect.name

    def _pool_capacity(self, *, is_async: bool) -> int | None:
        if self._binding is not None:
            return None  # every session shares the test's one connection
        engine = self.async_engine.sync_engine if is_async else self.engine
        return _compat.pool_capacity(engine.pool)

    def transaction(
        self,
        *,
        propagation: Propagation = Propagation.REQUIRED,
        isolation_level: str | None = None,
        read_only: bool = False,
        timeout: float | None = None,
        durable: bool = False,
        rollback_on: Sequence[type[BaseException]] = (),
        no_rollback_on: Sequence[type[BaseException]] = (),
    ) -> AbstractContextManager[Session]:
        """Run a ``with`` block as a unit of work: commit at the end, roll back on error.

        With the default ``Propagation.REQUIRED`` it joins the transaction active in the
        context (the request's, or an enclosing unit's), else opens a new session. The
        options mean what they mean for ``@transactional``. A session opened here is closed
        when the block ends; using it afterwards raises ``SessionFinishedError``.

        Raises:
            NoActiveTransactionError: ``MANDATORY`` with nothing active.
            TransactionExistsError: ``NEVER`` or ``durable=True`` inside a transaction.
            UnexpectedRollbackError: An inner unit failed and doomed this transaction.

        Example:
            >>> with db.transaction() as session:
            ...     session.add(User(name="ada"))
        """
        options = make_options(
            propagation=propagation,
            isolation_level=isolation_level,
            read_only=read_only,
            timeout=timeout,
            durable=durable,
            retries=0,
            retry_on_lock_timeout=False,
            rollback_on=rollback_on,
            no_rollback_on=no_rollback_on,
        )
        return transactions.transaction(self, options)

    def async_transaction(
        self,
        *,
        propagation: Propagation = Propagation.REQUIRED,
        isolation_level: str | None = None,
        read_only: bool = False,
        timeout: float | None = None,
        durable: bool = False,
        rollback_on: Sequence[type[BaseException]] = (),
        no_rollback_on: Sequence[type[BaseException]] = (),
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """Async twin of :meth:`transaction`.

        Raises:
            NoActiveTransactionError: ``MANDATORY`` with nothing active.
            TransactionExistsError: ``NEVER`` or ``durable=True`` inside a transaction.
            UnexpectedRollbackError: An inner unit failed and doomed this transaction.

        Example:
            >>> async with db.async_transaction() as session:
            ...     session.add(User(name="ada"))
        """
        options = make_options(
            propagation=propagation,
            isolation_level=isolation_level,
            read_only=read_only,
            timeout=timeout,
            durable=durable,
            retries=0,
            retry_on_lock_timeout=False,
            rollback_on=rollback_on,
            no_rollback_on=no_rollback_on,
        )
        return transactions.async_transaction(self, options)

    @overload
    def transactional(self, func: Callable[P, R], /) -> Callable[P, R]: ...
    @overload
    def transactional(
        self,
        /,
        *,
        propagation: Propagation = ...,
        isolation_level: str | None = ...,
        read_only: bool = ...,
        timeout: float | None = ...,
        durable: bool = ...,
        retries: int = ...,
        retry_on_lock_timeout: bool = ...,
        rollback_on: Sequence[type[BaseException]] = ...,
        no_rollback_on: Sequence[type[BaseException]] = ...,
    ) -> TransactionalDecorator: ...
    def transactional(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        propagation: Propagation = Propagation.REQUIRED,
        isolation_level: str | None = None,
        read_only: bool = False,
        timeout: float | None = None,
        durable: bool = False,
        retries: int = 0,
        retry_on_lock_timeout: bool = False,
        rollback_on: Sequence[type[BaseException]] = (),
        no_rollback_on: Sequence[type[BaseException]] = (),
    ) -> Any:
        """``@transactional`` bound to this manager: opens a session when none is active.

        For workers, scripts and CLIs, where no request session exists. Same options as
        :func:`fastapi_dbsession.transactional`.

        Example:
            >>> @db.transactional(read_only=True)
            ... def report(session: Session) -> Report: ...
        """
        options = make_options(
            propagation=propagation,
            isolation_level=isolation_level,
            read_only=read_only,
            timeout=timeout,
            durable=durable,
            retries=retries,
            retry_on_lock_timeout=retry_on_lock_timeout,
            rollback_on=rollback_on,
            no_rollback_on=no_rollback_on,
        )
        if func is not None:
            return decorate(func, self, options)
        return lambda decorated: decorate(decorated, self, options)

    def current_session(self) -> Session:
        """Return the sync session of the current request or unit of work.

        Raises:
            NoActiveTransactionError: Nothing is active in this context.

        Example:
            >>> with db.transaction():
            ...     db.current_session().add(User(name="ada"))
        """
        session = innermost_session(sync_frames, self)
        if session is None:
            raise NoActiveTransactionError(
                "db.current_session() found no session. This code runs outside a request that "
                "depends on db.session and outside db.transaction() / @transactional (a "
                'thread? a background task?). Open one with "with db.transaction() as '
                'session:" or decorate the function with @db.transactional.'
            )
        return session  # type: ignore[no-any-return]

    def current_async_session(self) -> AsyncSession:
        """Return the AsyncSession of the current request or unit of work.

        Raises:
            NoActiveTransactionError: Nothing is active in this context.
        """
        session = innermost_session(async_frames, self)
        if session is None:
            raise NoActiveTransactionError(
                "db.current_async_session() found no session. This code runs outside a request "
                "that depends on db.async_session and outside db.async_transaction() / "
                "@transactional (a task started with create_task? a background task?). Open "
                'one with "async with db.async_transaction() as session:" or decorate the '
                "function with @db.transactional."
            )
        return session  # type: ignore[no-any-return]

    def on_commit(self, callback: Callable[[], object], *, robust: bool = True) -> None:
        """Run ``callback`` after the outermost transaction of this context really commits.

        Registered inside a savepoint (``NESTED``), it is discarded if the savepoint rolls
        back. Sync or async callbacks. Inside a request, callbacks run after the commit and
        before the response is sent.

        Args:
            callback: A function of no arguments; an ``async def`` one is awaited.
            robust: Log a failing callback and go on (default); False lets it propagate.

        Raises:
            NoActiveTransactionError: No transaction is active in this context.

        Example:
            >>> db.on_commit(lambda: send_welcome_email(user.email))
        """
        self._hooks_frame("on_commit").on_commit.append((callback, robust))

    def on_rollback(self, callback: Callable[[], object], *, robust: bool = True) -> None:
        """Run ``callback`` after the transaction of this context rolls back.

        Registered inside a savepoint, it runs when that savepoint rolls back. See
        :meth:`on_commit` for the arguments.
        """
        self._hooks_frame("on_rollback").on_rollback.append((callback, robust))

    def _hooks_frame(self, name: str) -> Frame:
        frame = active_frame(sync_frames, self) or active_frame(async_frames, self)
        if frame is None:
            raise NoActiveTransactionError(
                f"db.{name}() needs an active transaction to attach the callback to, and none "
                "is active here. Call it inside a request that depends on db.session, inside "
                "db.transaction() or a @transactional function."
            )
        owner = frame.hooks_frame
        if owner.root is not None and owner.root.external:
            raise NoActiveTransactionError(
                f"db.{name}() was called in a unit of work whose session was passed in by the "
                "caller, who commits it: the library cannot know when that happens. Register "
                "the callback inside a request session, db.transaction() or @db.transactional "
                "unit that owns its transaction."
            )
        return owner

    def commit_policy(self, policy: CommitPolicy) -> Callable[[HTTPConnection], Awaitable[None]]:
        """Return a route dependency that sets the commit policy of that route's session.

        Args:
            policy: ``"commit"``, ``"manual"`` or ``"read_only"``.

        Raises:
            ConfigurationError: ``policy`` is not a commit policy.

        Example:
            >>> @app.post("/import", dependencies=[Depends(db.commit_policy("manual"))])
            ... def run_import(session: Session = Depends(db.session)) -> None: ...
        """
        checked = dependencies.check_policy(policy, argument="commit_policy")
        dependency = self._policy_dependencies.get(checked)
        if dependency is None:
            dependency = dependencies.commit_policy_dependency(self, checked)
            self._policy_dependencies[checked] = dependency
        return dependency

    # -- lifespan ------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Check connectivity at startup and dispose the engines at shutdown.

        Pass it to FastAPI (``FastAPI(lifespan=db.lifespan)``) or enter it from your own
        lifespan (``async with db.lifespan(app):``). Only the URLs you gave are checked: a
        derived twin is created on first use.

        Raises:
            DatabaseUnavailableError: A configured database cannot be reached.
        """
        if self._binding is None:  # a test's outer transaction has proven the connection
            if self._url_given:
                await run_in_threadpool(self._check_sync)
            if self._async_url_given:
                await self._check_async()
        try:
            yield
        finally:
            if self._binding is not None:  # under test isolation, the test owns the engines
                await self._binding.aclose_loop()  # (only this loop's connection must go now)
            else:
                await self.async_dispose()
                await run_in_threadpool(self.dispose)

    def _check_sync(self) -> None:
        engine = self.engine
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            raise _unavailable(engine.url, exc) from exc

    async def _check_async(self) -> None:
        engine = self.async_engine
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            raise _unavailable(engine.url, exc) from exc


def _unavailable(url: URL, exc: BaseException) -> DatabaseUnavailableError:
    reason = _urls.mask_text(str(getattr(exc, "orig", None) or exc)).strip().splitlines()
    return DatabaseUnavailableError(
        f"Cannot reach the database at {_urls.render(url)} at startup: "
        f"{type(exc).__name__}: {reason[0] if reason else ''}. Check that the server is "
        "running and that host, port, user, password and database name in the URL are right."
    )


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
