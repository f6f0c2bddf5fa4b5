"""Check the manager's arguments once and freeze them into a :class:`Config`.

The constructor's arguments and ``from_env``'s variables (read by :mod:`._environ`) end up
here: URLs are parsed and paired (an asyncio URL given as ``url`` becomes ``async_url``; the
missing side is derived for known driver pairs), option mappings are type-checked and copied,
the session classes and the commit policy are validated. Nothing here creates an engine or does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from . import _checks, _drivers, _engines, _urls
from ._binds import BindUrls, pair_binds
from ._recording import Observability
from ._replicas import StickyWindow, check_sticky, check_twophase, pair_replicas
from .errors import ConfigurationError
from .propagation import CommitPolicy, check_policy, check_statuses

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a :class:`~fastapi_dbsession._database.Database` is built from."""

    url: URL | None
    """The sync URL, given or derived (None: no sync side)."""
    async_url: URL | None
    """The asyncio URL, given or derived (None: no async side)."""
    url_given: bool
    async_url_given: bool
    engine_options: Mapping[str, Any]
    async_engine_options: Mapping[str, Any]
    session_options: Mapping[str, Any]
    async_session_options: Mapping[str, Any]
    session_class: type[Session]
    async_session_class: type[AsyncSession] | None
    commit_policy: CommitPolicy
    replica_urls: tuple[tuple[URL | None, URL | None], ...] = ()
    """Each read replica as (sync URL, async URL); a side that cannot be derived is None."""
    sticky_window: StickyWindow | None = None
    engine: Engine | None = None
    """An engine the user built: used as it is, and disposed only if asked."""
    async_engine: AsyncEngine | None = None
    """The same for the async side."""
    dispose_engines: bool = False
    """Whether the lifespan's shutdown disposes the given engines too."""
    commit_statuses: Container[int] | None = None
    """The response statuses whose request transaction commits (None: every status < 400)."""
    startup_retries: int = 3
    """Retries of the lifespan's startup check (exponential backoff from 0.5 s, capped at 5 s)."""
    startup_timeout: float = 5.0
    """Deadline of each startup attempt, in seconds."""
    pool_saturation_warning: float | None = None
    """Warn when this fraction of the pool is checked out (None, the default: off)."""
    binds: BindUrls = ()
    """Bind key -> (sync URL, async URL): the databases of models with that ``__bind_key__``."""
    twophase: bool = False
    """Request sessions of several twophase managers commit by PREPARE, then COMMIT PREPARED."""
    pgbouncer: bool = False
    """Keep every PostgreSQL driver off server-side prepared statements (PgBouncer)."""
    unshared_connect_args: tuple[str, ...] = ()
    """``engine_options['connect_args']`` keys the async side's other driver did not get."""
    name: str = "default"
    """The database's name in logs, metrics and engine logging names."""
    observability: Observability = dataclasses.field(default_factory=Observability)
    timeouts: tuple[float | None, float | None] = (10.0, 60.0)
    """Client-side deadlines in seconds: ``(connect_timeout, command_timeout)`` (None: none)."""

    def with_urls(self, url: URL | None, async_url: URL | None) -> Config:
        """The same configuration on other databases (the testing helpers' test database)."""
        return dataclasses.replace(
            self,
            url=url,
            async_url=async_url,
            engine=None,
            async_engine=None,
            replica_urls=(),
        )

    def with_engines(self, engine: Engine | None, async_engine: AsyncEngine | None) -> Config:
        """The same configuration on engines a test suite built (``testing.use_engine``).

        Raises:
            ConfigurationError: Neither engine given, or one of the wrong type.
        """
        if not _check_engines(engine, async_engine, False):
            raise ConfigurationError(
                "use_engine() needs an engine: use_engine(db, engine) or "
                "use_engine(db, async_engine=async_engine)."
            )
        return dataclasses.replace(
            self,
            url=None if engine is None else engine.url,
            async_url=None if async_engine is None else async_engine.url,
            url_given=engine is not None,
            async_url_given=async_engine is not None,
            engine=engine,
            async_engine=async_engine,
            dispose_engines=False,  # the test's engines: the app's shutdown leaves them alone
            replica_urls=(),
        )

    def is_given(self, engine: object) -> bool:
        """Whether ``engine`` is one the user handed over (not ours to dispose unasked)."""
        return engine is not None and (engine is self.engine or engine is self.async_engine)

    def describe(self) -> str:
        """``url=..., async_url=...`` with passwords masked, for ``repr()`` and messages."""
        described = [
            f"{name}={_urls.render(url)!r}"
            for name, url in (("url", self.url), ("async_url", self.async_url))
            if url is not None
        ]
        if self.binds:
            urls = ((key, sync_url or async_url) for key, sync_url, async_url in self.binds)
            shown = (f"{key!r}: {_urls.render(url)!r}" for key, url in urls if url is not None)
            described.append(f"binds={{{', '.join(shown)}}}")
        return ", ".join(described)


def build_config(
    *,
    url: str | URL | None,
    async_url: str | URL | None,
    engine_options: Mapping[str, Any] | None,
    async_engine_options: Mapping[str, Any] | None,
    session_options: Mapping[str, Any] | None,
    async_session_options: Mapping[str, Any] | None,
    session_class: type[Session],
    async_session_class: type[AsyncSession] | None,
    commit_policy: CommitPolicy,
    replica_urls: Sequence[str | URL] = (),
    sticky_window: StickyWindow | None = None,
    engine: Engine | None = None,
    async_engine: AsyncEngine | None = None,
    dispose_engines: bool = False,
    commit_statuses: Container[int] | None = None,
    startup_retries: int = 3,
    startup_timeout: float = 5.0,
    pool_saturation_warning: float | None = None,
    twophase: bool = False,
    binds: Mapping[str, str | URL] | None = None,
    pgbouncer: bool = False,
    name: str | None = None,
    record_queries: bool = False,
    slow_query_threshold: float | None = None,
    log_query_parameters: bool = False,
    hold_warning_threshold: float | None = None,
    command_timeout: float | None = 60.0,
    connect_timeout: float | None = 10.0,
) -> Config:
    """Check the constructor's arguments and return the frozen configuration.

    Raises:
        ConfigurationError: No URL or engine, a malformed URL, options of the wrong type, a
            session class that is not a ``Session``, an unknown commit policy, an engine
            together with a URL or options for the same side, ``pgbouncer=True`` on another
            database than PostgreSQL.
    """
    given = _check_engines(engine, async_engine, dispose_engines)
    sync_url, given_async = _pair_urls(url, async_url, required=not given)
    if given:
        _check_sides(
            engine=engine,
            async_engine=async_engine,
            sync_url=sync_url,
            async_url=given_async,
            engine_options=engine_options,
            async_engine_options=async_engine_options,
        )
    if engine is not None:
        sync_url = engine.url
    if async_engine is not None:
        given_async = async_engine.url
    # no twin is derived from an engine the user built: its URL may not say how to connect
    final_url = sync_url if sync_url is not None or given else _derive(given_async, _urls.sync_twin)
    final_async = (
        given_async if given_async is not None or given else _derive(sync_url, _urls.async_twin)
    )
    if not isinstance(pgbouncer, bool):
        raise ConfigurationError(f"pgbouncer must be True or False, not {pgbouncer!r}.")
    if pgbouncer:
        _drivers.check_pgbouncer((final_url, final_async))
    checked_engine_options = _engines.check_engine(engine_options, argument="engine_options")
    shared_options, unshared = _async_side(checked_engine_options, final_url, final_async)
    session_defaults = _engines.check_options(session_options, argument="session_options")
    bind_urls = pair_binds(binds)
    if twophase is not False:
        urls = [final_url or final_async, *(pair[1] or pair[2] for pair in bind_urls)]
        session_defaults = {**session_defaults, "twophase": check_twophase(twophase, urls)}
    if not (isinstance(session_class, type) and issubclass(session_class, Session)):
        raise ConfigurationError(
            f"session_class must be a subclass of sqlalchemy.orm.Session, not {session_class!r}."
            " For an AsyncSession class, use async_session_class=."
        )
    async_defaults = _engines.check_options(async_session_options, argument="async_session_options")
    _checks.session_options(session_defaults, async_defaults, session_class, async_session_class)
    backend = next((u.get_backend_name() for u in (final_url, final_async) if u is not None), None)
    _checks.session_twophase(session_defaults, backend, argument="session_options")
    _checks.session_twophase(async_defaults, backend, argument="async_session_options")
    config = Config(
        url=final_url,
        async_url=final_async,
        url_given=sync_url is not None,
        async_url_given=given_async is not None,
        engine_options=checked_engine_options,
        async_engine_options=(
            shared_options
            if async_engine_options is None
            else _engines.check_engine(async_engine_options, argument="async_engine_options")
        ),
        session_options=session_defaults,
        twophase=twophase,
        binds=bind_urls,
        async_session_options={
            "expire_on_commit": False,
            **session_defaults,
            **async_defaults,
        },
        session_class=session_class,
        async_session_class=async_session_class,
        commit_policy=check_policy(commit_policy, argument="commit_policy"),
        engine=engine,
        async_engine=async_engine,
        dispose_engines=dispose_engines,
        commit_statuses=check_statuses(commit_statuses, argument="commit_statuses"),
        **_operations(startup_retries, startup_timeout, pool_saturation_warning),
        name=_name(name, sync_url or given_async),
        observability=_observability(
            record_queries, slow_query_threshold, log_query_parameters, hold_warning_threshold
        ),
        pgbouncer=pgbouncer,
        unshared_connect_args=unshared if async_engine_options is None else (),
        replica_urls=pair_replicas(replica_urls),
        sticky_window=check_sticky(sticky_window, replica_urls),
        timeouts=_checks.timeouts(connect_timeout=connect_timeout, command_timeout=command_timeout),
    )
    for side_url, options, argument in (
        (config.url, config.engine_options, "engine_options"),
        (config.async_url, config.async_engine_options, "async_engine_options"),
    ):
        if side_url is not None:
            _engines.sqlite_pragmas(side_url, options)  # refuse a bad pragma now, not later
            _checks.backend_isolation_level(
                options.get("isolation_level"),
                side_url.get_backend_name(),
                argument=f"{argument}['isolation_level']",
                engine=True,
            )
    return config


def _check_engines(engine: object, async_engine: object, dispose_engines: object) -> bool:
    """Check the engines' types; return whether any was given."""
    if engine is not None and not isinstance(engine, Engine):
        hint = (
            " That is an asyncio engine: pass it as async_engine=."
            if isinstance(getattr(engine, "sync_engine", None), Engine)
            else ""
        )
        raise ConfigurationError(
            f"engine must be a sqlalchemy Engine (from create_engine()), not "
            f"{type(engine).__name__}.{hint}"
        )
    is_async_engine = isinstance(getattr(async_engine, "sync_engine", None), Engine)
    if async_engine is not None and not is_async_engine:
        hint = ""
        if isinstance(async_engine, Engine):
            hint = " That is a sync engine: pass it as engine=."
        raise ConfigurationError(
            "async_engine must be a sqlalchemy AsyncEngine (from create_async_engine()), not "
            f"{type(async_engine).__name__}.{hint}"
        )
    given = engine is not None or async_engine is not None
    if not isinstance(dispose_engines, bool):
        raise ConfigurationError(f"dispose_engines must be True or False, not {dispose_engines!r}.")
    if dispose_engines and not given:
        raise ConfigurationError(
            "dispose_engines=True only applies to engines you pass (engine= / async_engine=); "
            "the engines the manager builds from URLs are always disposed at shutdown."
        )
    return given


def _check_sides(
    *,
    engine: Engine | None,
    async_engine: AsyncEngine | None,
    sync_url: URL | None,
    async_url: URL | None,
    engine_options: Mapping[str, Any] | None,
    async_engine_options: Mapping[str, Any] | None,
) -> None:
    """Refuse a URL or engine options for a side whose engine was handed over."""
    for side, given, url, options, names in (
        ("sync", engine, sync_url, engine_options, ("engine", "url", "engine_options")),
        (
            "async",
            async_engine,
            async_url,
            async_engine_options,
            ("async_engine", "async_url", "async_engine_options"),
        ),
    ):
        if given is None:
            continue
        if url is not None:
            raise ConfigurationError(
                f"{names[0]}= and {names[1]}= both name the {side} database: pass one of them "
                f"(the engine is used as it is; its URL is {_urls.render(given.url)!r})."
            )
        if options is not None:
            raise ConfigurationError(
                f"{names[2]} cannot apply to an engine you built ({names[0]}=): the manager uses "
                "it as it is. Pass those options to create_engine() yourself"
                + (
                    ", or use async_engine_options for an async side built from async_url."
                    if side == "sync"
                    else "."
                )
            )


def _name(name: str | None, url: URL | None) -> str:
    """The given name, else the URL's database name (a SQLite file's stem), else "default"."""
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f'name={name!r} must be a non-empty string, e.g. name="orders": it labels '
                "this database in logs and metrics."
            )
        return name
    database = None if url is None else url.database
    if not database or database == ":memory:":
        return "default"
    return database.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".db") or "default"


def _observability(
    record_queries: object,
    slow_query_threshold: object,
    log_query_parameters: object,
    hold_warning_threshold: object,
) -> Observability:
    for argument, flag in (
        ("record_queries", record_queries),
        ("log_query_parameters", log_query_parameters),
    ):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{argument}={flag!r} must be True or False.")
    return Observability(
        record_queries=bool(record_queries),
        slow_query_threshold=_seconds(
            "slow_query_threshold", slow_query_threshold, "no slow-query log"
        ),
        log_query_parameters=bool(log_query_parameters),
        hold_warning_threshold=_seconds(
            "hold_warning_threshold", hold_warning_threshold, "no hold-time warnings"
        ),
    )


def _seconds(argument: str, value: object, off: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(
            f"{argument}={value!r} must be a number of seconds >= 0 (e.g. 0.5), or None for {off}."
        )
    return float(value)


def _async_side(
    options: dict[str, Any], url: URL | None, async_url: URL | None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``engine_options`` for the async side: without ``connect_args`` of another driver.

    Returns the options and the names of the connect arguments left out.
    """
    connect_args = options.get("connect_args")
    if not connect_args or _drivers.shares_connect_args(url, async_url):
        return options, ()
    return {k: v for k, v in options.items() if k != "connect_args"}, tuple(connect_args)


def _operations(
    startup_retries: object, startup_timeout: object, pool_saturation_warning: object
) -> dict[str, Any]:
    """Check the operations arguments (startup check, saturation warning)."""
    if isinstance(startup_retries, bool) or not isinstance(startup_retries, int):
        raise ConfigurationError(f"startup_retries must be an int >= 0, not {startup_retries!r}.")
    if startup_retries < 0:
        raise ConfigurationError(f"startup_retries must be >= 0, not {startup_retries}.")
    if (
        isinstance(startup_timeout, bool)
        or not isinstance(startup_timeout, int | float)
        or startup_timeout <= 0
    ):
        raise ConfigurationError(
            f"startup_timeout must be a number of seconds > 0, not {startup_timeout!r}."
        )
    if pool_saturation_warning is not None and (
        isinstance(pool_saturation_warning, bool)
        or not isinstance(pool_saturation_warning, int | float)
        or not 0 < pool_saturation_warning <= 1
    ):
        raise ConfigurationError(
            "pool_saturation_warning must be a fraction of the pool in (0, 1], e.g. 0.9, or "
            f"None to turn the warning off; got {pool_saturation_warning!r}."
        )
    return {
        "startup_retries": startup_retries,
        "startup_timeout": float(startup_timeout),
        "pool_saturation_warning": (
            None if pool_saturation_warning is None else float(pool_saturation_warning)
        ),
    }


def _pair_urls(
    url: str | URL | None, async_url: str | URL | None, *, required: bool = True
) -> tuple[URL | None, URL | None]:
    """Parse both URLs; an asyncio URL given as ``url`` is taken as ``async_url``."""
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
    if required and sync_url is None and given_async is None:
        raise ConfigurationError(
            "DatabaseSessionManager needs a database URL or engine: "
            'DatabaseSessionManager("sqlite:///./app.db"), '
            'DatabaseSessionManager(async_url="postgresql+asyncpg://app@db/app"), '
            "DatabaseSessionManager(engine=my_engine), or "
            "DatabaseSessionManager.from_env() with DATABASE_URL set."
        )
    return sync_url, given_async


def _derive(url: URL | None, twin: Callable[[URL], URL | None]) -> URL | None:
    return None if url is None else twin(url)
