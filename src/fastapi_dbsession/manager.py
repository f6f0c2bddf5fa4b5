"""Give users one object per database: the ``DatabaseSessionManager`` facade."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from . import _config, decorators, dependencies, transactions
from ._database import Database
from ._facets.context import ContextFacet
from ._facets.engines import EnginesFacet
from ._facets.observability import ObservabilityFacet
from ._facets.operations import OperationsFacet
from ._facets.replicas import ReplicasFacet
from ._probes import Prober
from ._replicas import StickyWindow
from .decorators import P, R, TransactionalDecorator
from .propagation import CommitPolicy, Propagation, make_options

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


class DatabaseSessionManager(
    EnginesFacet, ContextFacet, ObservabilityFacet, OperationsFacet, ReplicasFacet
):
    """Own the engines and sessions of one database for a FastAPI app.

    Build one per database at import time, hand ``db.lifespan`` to FastAPI, and ask for the
    request's session with ``Depends(db.session)`` or ``Depends(db.async_session)``. Engines
    are created on first use: an app that uses one side never needs the other side's driver.

    Args:
        url: The sync URL (``str`` or ``sqlalchemy.URL``); an asyncio URL here is ``async_url``.
        async_url: The asyncio URL; derived from ``url`` for known driver pairs when omitted
            (sqlite → aiosqlite, postgresql+psycopg → psycopg, postgresql → asyncpg,
            mysql+pymysql → aiomysql).
        engine_options: ``create_engine`` arguments over the safe defaults (servers: a
            liveness check at checkout without a round trip, ``pool_pre_ping`` True/False to
            replace it; SQLite: ``check_same_thread=False``, ``StaticPool`` for ``:memory:``).
        async_engine_options: The same for ``create_async_engine`` (default: ``engine_options``,
            without its ``connect_args`` when the async driver is another library, e.g.
            psycopg and asyncpg).
        session_options: Keyword arguments for the sessionmakers (both sides).
        async_session_options: Async sessionmaker overrides (default ``expire_on_commit=False``).
        session_class: The sync session class, e.g. ``sqlmodel.Session``.
        async_session_class: The async one, e.g. ``sqlmodel.ext.asyncio.session.AsyncSession``.
        commit_policy: What request sessions do when the endpoint succeeds: ``"commit"``
            (default), ``"manual"`` or ``"read_only"``; per route: ``db.commit_policy(...)``.
        replica_urls: Read replicas for read-only work; ``sticky_window``: a :class:`StickyWindow`.
        commit_statuses: Under ``"commit"``, the statuses of a returned response that commit,
            e.g. ``range(200, 300)``; default: every status below 400. Raising always rolls back.
        engine: An ``Engine`` you built (custom ``creator``, shared with Alembic or a CLI),
            used as it is instead of ``url``: no options or listeners added.
        async_engine: The same for the async side, instead of ``async_url``.
        dispose_engines: Let the lifespan's shutdown dispose the given engines too (default:
            they are yours, only ``db.dispose()`` disposes them).
        name: This database's name in log lines and metrics (default: the URL's database
            name, a SQLite file's stem, else ``"default"``).
        record_queries: Count and time each request's SQL statements and log one line per
            request (logger ``fastapi_dbsession.queries``); ``ServerTimingMiddleware`` puts
            the figures in a ``Server-Timing`` header. Off: no listener is installed.
        slow_query_threshold: Log statements taking at least this many seconds, with the
            code location that issued them (logger ``fastapi_dbsession.slow_queries``).
        log_query_parameters: Show slow statements' parameters (hidden by default).
        hold_warning_threshold: Log a request or unit of work whose transaction held a
            connection this many seconds or more, with its route or the code that opened it
            (logger ``fastapi_dbsession.holds``); also report sessions garbage-collected open.
        startup_retries: How often ``lifespan``'s startup check retries a database that does
            not answer (backoff 0.5 s, doubling, capped at 5 s) before it raises.
        startup_timeout: The deadline of each startup attempt, in seconds.
        pool_saturation_warning: Log a WARNING (at most once a minute per pool) when this
            fraction of the pool is checked out, e.g. 0.9 (None, the default: off; on, it
            costs a pool ``checkout`` listener on every request).
        twophase: A request (or session) that wrote to several databases commits them by
            two-phase commit (PostgreSQL, ``max_prepared_transactions > 0``).
        binds: ``{bind key: URL}``: models with ``__bind_key__`` (or ``info={"bind_key": ...}``
            on their table) use that database, in the same session (see docs/scaling.md).
        pgbouncer: The database is reached through PgBouncer in transaction (or statement)
            pooling mode: every PostgreSQL driver is kept off server-side prepared statements
            (see docs/scaling.md).
        command_timeout: Client-side deadline, in seconds, of each round trip to the server
            (statement, COMMIT, ROLLBACK, ping). Past it the connection is closed and
            discarded and ``CommandTimeoutError`` is raised, even if the server is frozen.
            ``None``: no limit. Default 60. Not for SQLite.
        connect_timeout: Client-side deadline, in seconds, of opening a connection (given to
            the driver: libpq ``connect_timeout``, asyncpg ``timeout``, PyMySQL/aiomysql
            ``connect_timeout``) unless the URL or ``connect_args`` set it. ``None``: the
            driver's default. Default 10.

    Raises:
        ConfigurationError: No URL or engine, a malformed URL, options of the wrong type,
            a URL or ``engine_options`` for a side whose engine was given.

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
        replica_urls: Sequence[str | URL] = (),
        sticky_window: StickyWindow | None = None,
        commit_statuses: Container[int] | None = None,
        engine: Engine | None = None,
        async_engine: AsyncEngine | None = None,
        dispose_engines: bool = False,
        name: str | None = None,
        record_queries: bool = False,
        slow_query_threshold: float | None = None,
        log_query_parameters: bool = False,
        hold_warning_threshold: float | None = None,
        startup_retries: int = 3,
        startup_timeout: float = 5.0,
        pool_saturation_warning: float | None = None,
        twophase: bool = False,
        binds: Mapping[str, str | URL] | None = None,
        pgbouncer: bool = False,
        command_timeout: float | None = 60.0,
        connect_timeout: float | None = 10.0,
    ) -> None:
        config = _config.build_config(**_arguments(locals()))
        self._database = Database(config)  # the one seam fastapi_dbsession.testing uses
        self._prober = Prober(self._database)
        self._policy_dependencies: dict[str, Callable[[HTTPConnection], Awaitable[None]]] = {}
        self.session: Callable[..., Awaitable[Session]] = dependencies.session_dependency(
            self._database
        )
        """Dependency giving the request's sync ``Session``: ``Depends(db.session)``."""
        self.async_session: Callable[..., Awaitable[AsyncSession]] = (
            dependencies.async_session_dependency(self._database)
        )
        """Dependency giving the request's ``AsyncSession``: ``Depends(db.async_session)``."""

    def __repr__(self) -> str:
        return repr(self._database)

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

        ``REQUIRED`` (the default) joins the context's transaction (the request's, or an
        enclosing unit's), else opens a session, closed when the block ends. The options mean
        what they mean for ``@transactional``.

        Raises:
            NoActiveTransactionError: ``MANDATORY`` with nothing active.
            TransactionExistsError: ``NEVER`` or ``durable=True`` inside a transaction.
            UnexpectedRollbackError: An inner unit failed and doomed this transaction.

        Example:
            >>> with db.transaction() as session:
            ...     session.add(User(name="ada"))
        """
        options = make_options(**_arguments(locals()))
        return transactions.transaction(self._database, options)

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
        """Async twin of :meth:`transaction`: ``async with db.async_transaction() as session:``.

        Raises:
            NoActiveTransactionError: ``MANDATORY`` with nothing active.
            TransactionExistsError: ``NEVER`` or ``durable=True`` inside a transaction.
            UnexpectedRollbackError: An inner unit failed and doomed this transaction.
        """
        options = make_options(**_arguments(locals()))
        return transactions.async_transaction(self._database, options)

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
        retry_deadline: float | None = ...,
        rollback_on: Sequence[type[BaseException]] = ...,
        no_rollback_on: Sequence[type[BaseException]] = ...,
    ) -> TransactionalDecorator: ...
    def transactional(self, func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """``@transactional`` bound to this manager: opens a session when none is active.

        For workers, scripts and CLIs, where no request session exists. Same options as
        :func:`fastapi_dbsession.transactional`.

        Example:
            >>> @db.transactional(read_only=True)
            ... def report(session: Session) -> Report: ...
        """
        return decorators.transactional_for(self._database, func, options)


def _arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """A method's arguments, from its ``locals()`` taken first thing: all but ``self``."""
    return {name: value for name, value in arguments.items() if name != "self"}
