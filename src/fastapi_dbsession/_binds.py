"""Route the models of one session to several databases by bind key (``binds={...}``).

A manager built with ``binds={"billing": "postgresql+psycopg://app@billing/app"}`` owns a
:class:`BindSet`: one engine per bind key and side, created lazily with the manager's options.
Every session of that manager carries the set's look-up in ``session.info``; the session
classes of :mod:`._sessions` ask it first for the bind of each statement. A model says where it
lives as in Flask-SQLAlchemy: ``__bind_key__ = "billing"`` on the class, or
``info={"bind_key": "billing"}`` on its ``Table`` or ``MetaData`` (Core tables too). Everything
without a key goes to the manager's own database (and its replicas).

A key the manager does not know raises :class:`~fastapi_dbsession.errors.ConfigurationError`
naming the model and the keys it has, at the statement, never a silent write to the default
database.

Without two-phase commit, a session that used several of the databases commits them in a set
order (SQLAlchemy alone commits its connections in no defined order): the manager's own
database first, then the binds in the order ``binds`` declares them. Each session records the
connections its transaction began (``after_begin``); just before SQLAlchemy would commit them
(``before_commit``, after the flush) :meth:`BindSet.commit_in_order` sends each one's COMMIT
itself, through the dialect's ``do_commit`` (so ``command_timeout`` guards it). SQLAlchemy's
own transactions stay open: its commit then finds each driver connection already committed
(psycopg, asyncpg and SQLite send nothing; the MySQL drivers send an empty ``COMMIT``), and a
rollback after a failure rolls back only what was not committed, with no SQLAlchemy state to
repair. A commit that fails after another one succeeded raises
:class:`~fastapi_dbsession.errors.PartialCommitError` naming the committed and the failed
databases; the session's rollback then undoes the ones not yet committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event, inspect
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

from . import _compat, _urls
from ._outcome import partial_commit
from ._sessions import BINDS
from .errors import CommandTimeoutError, ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.orm import Session, SessionTransaction

_BEGAN = "fastapi_dbsession.began"
"""``session.info`` key: (root transaction, the connections it began, in order)."""

BindUrls = tuple[tuple[str, URL | None, URL | None], ...]
"""Each bind as (key, sync URL, async URL); a side that cannot be derived is None."""


def pair_binds(binds: object) -> BindUrls:
    """The manager's ``binds`` argument: keys checked, each URL parsed and its twin derived.

    Raises:
        ConfigurationError: Not a mapping of non-empty strings to URLs, or a malformed URL.
    """
    if binds is None:
        return ()
    if not isinstance(binds, Mapping):
        raise ConfigurationError(
            f"binds must be a mapping of bind keys to URLs, not {type(binds).__name__}: "
            'binds={"billing": "postgresql+psycopg://app@billing-db/billing"}.'
        )
    pairs: list[tuple[str, URL | None, URL | None]] = []
    for key, value in binds.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"binds keys must be non-empty strings (a model's __bind_key__), not {key!r}."
            )
        url = _urls.parse(value, argument=f"binds[{key!r}]")
        if _urls.is_async_driver(url):
            pairs.append((key, _urls.sync_twin(url), url))
        else:
            pairs.append((key, url, _urls.async_twin(url)))
    return tuple(pairs)


def bind_key_of(mapper: Any, clause: Any) -> str | None:
    """The bind key of what a statement works on: the mapped class's ``__bind_key__``, else the
    ``bind_key`` in its table's (or that table's ``MetaData``'s) ``info``."""
    if mapper is not None:
        mapper = getattr(inspect(mapper), "mapper", mapper)  # a class, an alias: its Mapper
        key = getattr(mapper.class_, "__bind_key__", None)
        if key is not None:
            return str(key)
        return _table_key(mapper.local_table)
    if isinstance(clause, UpdateBase):
        return _table_key(clause.table)
    if isinstance(clause, Table):
        return _table_key(clause)
    for table in getattr(clause, "get_final_froms", lambda: ())():
        key = _table_key(table)
        if key is not None:
            return key
    return None


def _table_key(table: object) -> str | None:
    if not isinstance(table, Table):
        return None
    key = table.info.get("bind_key", table.metadata.info.get("bind_key"))
    return None if key is None else str(key)


class BindSet:
    """The bind engines of one manager, per key and side, created on first use."""

    def __init__(
        self,
        urls: BindUrls,
        create: Callable[..., Engine],
        owner: str,
        *,
        name: str = "default",
        twophase: bool = False,
    ) -> None:
        """``create(url, is_async=...)`` makes one engine and returns its sync view;
        ``owner`` names the manager in error messages (password masked), ``name`` its own
        database in :class:`PartialCommitError`; with ``twophase`` SQLAlchemy prepares every
        database before committing any, so the commit order does not matter."""
        self._urls = {key: (sync_url, async_url) for key, sync_url, async_url in urls}
        self._create = create
        self._owner = owner
        self._name = name
        self._twophase = twophase
        self._engines: dict[tuple[str, bool], Engine] = {}
        self._keys: dict[Engine, str] = {}  # each bind engine: its key
        self._lock = threading.Lock()

    def attach(self, session: Session, *, is_async: bool) -> None:
        """Let ``session`` (an ``AsyncSession``'s sync session) route bound models, and
        commit the databases it used in order."""
        session.info[BINDS] = lambda mapper, clause: self.bind_for(mapper, clause, is_async)
        if not self._twophase:
            event.listen(session, "after_begin", _record_connection)
            event.listen(session, "before_commit", self.commit_in_order)

    def commit_in_order(self, session: Session) -> None:
        """Commit the connections of ``session``'s transaction: its own database's, then the
        binds' in declared order (``before_commit``; SQLAlchemy skips them afterwards).

        Raises:
            PartialCommitError: A commit failed after another database had committed.
        """
        if session.twophase or session.get_nested_transaction() is not None:
            return  # SQLAlchemy prepares all first / only a savepoint is released
        root = session.get_transaction()
        session.flush()  # every statement reaches its database before any of them commits
        began = session.info.pop(_BEGAN, None)
        if root is None or began is None or began[0] is not root:
            return
        ranked: list[tuple[int, str, Connection]] = []
        for connection in began[1]:
            engine = connection.engine
            if engine is session.bind:
                ranked.append((0, self._name, connection))
            elif engine in self._keys:
                key = self._keys[engine]
                ranked.append((1 + list(self._urls).index(key), key, connection))
            # else a replica's or a user's own bind: read-only here, SQLAlchemy ends it
        if len(ranked) < 2:
            return  # one database: SQLAlchemy's own commit is all there is
        ranked.sort(key=lambda item: item[0])  # stable: one database's connections keep order
        committed: list[str] = []
        for position, (_, key, connection) in enumerate(ranked):
            if not connection.in_transaction():
                continue
            try:
                _commit_at_driver(connection)
            except Exception as exc:
                if not committed:
                    raise  # nothing committed: an ordinary failed commit, all rolled back
                rest = [k for _, k, _ in ranked[position + 1 :] if k not in committed]
                raise self._partial(committed, key, exc, rest) from exc
            if key not in committed:
                committed.append(key)

    def _partial(
        self, committed: list[str], failed: str, error: BaseException, rest: list[str]
    ) -> Exception:
        def label(key: str) -> str:
            return f"the own database {key!r}" if key == self._name else f"bind {key!r}"

        return partial_commit(
            [(key, label(key)) for key in committed],
            (failed, label(failed)),
            error,
            rolled_back=list(dict.fromkeys(label(key) for key in rest)),
            advice=(
                f"{self._owner} commits its own database first, then the binds in the order "
                "binds= declares them. Nothing undoes the commits already made: "
                "reconcile them, or make the session atomic with twophase=True (every "
                "database PostgreSQL with max_prepared_transactions > 0)."
            ),
        )

    def bind_for(self, mapper: Any, clause: Any, is_async: bool) -> Engine | None:
        """The engine for a statement's bind key; None: the session's own database.

        Raises:
            ConfigurationError: The model's bind key is not one of ``binds``.
        """
        key = bind_key_of(mapper, clause)
        if key is None:
            return None
        engine = self._engines.get((key, is_async))
        return engine if engine is not None else self._engine(key, mapper, clause, is_async)

    def _engine(self, key: str, mapper: Any, clause: Any, is_async: bool) -> Engine:
        pair = self._urls.get(key)
        if pair is None:
            what = "This statement's table"
            if mapper is not None:
                what = getattr(inspect(mapper), "class_", mapper).__name__
            known = ", ".join(repr(k) for k in self._urls) or "none"
            raise ConfigurationError(
                f"{what} has bind key {key!r}, but {self._owner} has no bind of that name "
                f"(binds: {known}). Add it: DatabaseSessionManager(..., binds={{{key!r}: "
                '"postgresql+psycopg://app@host/db"}), or fix the model\'s __bind_key__.'
            )
        url, other = pair[is_async], pair[not is_async]
        if url is None:
            side = "async" if is_async else "sync"
            given = "" if other is None else f" from {_urls.render(other)!r}"
            raise ConfigurationError(
                f"binds[{key!r}] of {self._owner} has no {side} URL and none can be derived"
                f"{given}: give binds[{key!r}] the {side} driver's URL, or use the other side."
            )
        with self._lock:
            engine = self._engines.get((key, is_async))
            if engine is None:
                engine = self._engines[key, is_async] = self._create(url, is_async=is_async)
                self._keys[engine] = key
        return engine

    def take(self, *, is_async: bool) -> list[Engine]:
        """Forget one side's engines (for disposal); they are recreated on next use."""
        with self._lock:
            taken = [e for (_, side), e in self._engines.items() if side is is_async]
            self._engines = {k: e for k, e in self._engines.items() if k[1] is not is_async}
            for engine in taken:
                self._keys.pop(engine, None)
        return taken

    def take_async(self) -> list[AsyncEngine]:
        """:meth:`take` for the async side, as ``AsyncEngine`` proxies that dispose the pool."""
        from sqlalchemy.ext.asyncio import AsyncEngine

        return [AsyncEngine(engine) for engine in self.take(is_async=True)]

    def after_fork(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them."""
        for engine in list(self._engines.values()):
            _compat.forget_parent_connections(engine)


def _commit_at_driver(connection: Connection) -> None:
    """COMMIT ``connection``'s transaction through its dialect, leaving SQLAlchemy's
    transaction open for SQLAlchemy's own commit (which then has nothing left to send).

    Raises:
        DBAPIError: The driver's error, wrapped as SQLAlchemy wraps it; a lost connection is
            invalidated (never returned to the pool) and says so.
        CommandTimeoutError: The server did not answer within ``command_timeout``.
    """
    dialect = connection.dialect
    try:
        dialect.do_commit(connection.connection)
    except Exception as exc:
        dbapi_error = dialect.loaded_dbapi.Error
        if isinstance(exc, CommandTimeoutError):
            connection.invalidate(exc)
            raise
        if not isinstance(exc, dbapi_error):
            raise
        lost = dialect.is_disconnect(exc, connection.connection, None)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            "COMMIT", None, exc, dbapi_error, connection_invalidated=lost, dialect=dialect
        ) from exc


def _record_connection(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    """``after_begin``: remember each connection the session's root transaction began."""
    root = transaction
    while root.parent is not None:
        root = root.parent
    began: tuple[SessionTransaction, list[Connection]] | None = session.info.get(_BEGAN)
    if began is None or began[0] is not root:
        began = session.info[_BEGAN] = (root, [])
    if connection not in began[1]:
        began[1].append(connection)
