"""Route a session's reads to read replicas and its writes to the primary.

A manager built with ``replica_urls=[...]`` owns a :class:`ReplicaSet`: the replicas' engines
(created lazily, per side), a round-robin cursor and each replica's health. Every session of
that manager carries a :class:`Router` in ``session.info``; the session classes of
:mod:`._sessions` ask it for the bind of each statement (SQLAlchemy's documented
``Session.get_bind`` pattern, "Custom Vertical Partitioning"). A router of read-only work
sends reads to one replica (picked once per session, so a transaction reads one snapshot),
and everything else to the primary:

- a flush, an ``INSERT`` / ``UPDATE`` / ``DELETE`` statement and ``SELECT ... FOR UPDATE``
  (raw SQL text too, when it starts with a write keyword or locks rows) go to the primary and
  pin the session there (read-your-writes within a session);
- a write is recorded in the context's :class:`Writes` (one per request): later read-only
  sessions of that request read from the primary too; with a sticky window, so do the requests
  that come back with the cookie or header the first one set (as Rails' ``DatabaseSelector``);
- a replica that cannot be connected to is skipped with a WARNING and tried again after a
  back-off (1 s, doubling up to 30 s); when none answers, reads go to the primary.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, Engine
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from . import _compat, _urls
from ._sessions import ROUTER
from .errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
"""Seconds a replica that failed to connect is skipped the first time."""
MAX_BACKOFF = 30.0
"""The longest a down replica is skipped before it is tried again."""


@dataclass(eq=False, slots=True)
class _Health:
    down_until: float = 0.0
    backoff: float = 0.0


class ReplicaSet:
    """The read replicas of one manager: engines per side, round robin, health, back-off."""

    def __init__(
        self,
        urls: Sequence[tuple[URL | None, URL | None]],
        create: Callable[..., Engine],
    ) -> None:
        """``create(url, is_async=...)`` makes one replica's engine and returns its sync view."""
        self._urls = tuple(urls)
        self._create = create
        self._engines: dict[bool, list[Engine] | None] = {False: None, True: None}
        self._health: dict[int, _Health] = {}
        self._cursor = itertools.count()
        self._lock = threading.Lock()
        self._all_down_logged = False

    def __bool__(self) -> bool:
        return bool(self._urls)

    def engines(self, *, is_async: bool) -> list[Engine]:
        """The sync engines of one side's replicas (an async engine's ``sync_engine``)."""
        engines = self._engines[is_async]
        if engines is None:
            with self._lock:
                engines = self._engines[is_async]
                if engines is None:
                    urls = [pair[is_async] for pair in self._urls]
                    engines = [self._create(url, is_async=is_async) for url in urls if url]
                    self._engines[is_async] = engines
        return engines

    def pick(self, *, is_async: bool) -> Engine | None:
        """The next replica (round robin) that accepts a connection; None if none does.

        Called where the session's I/O runs (a worker thread, or the ``AsyncSession``'s
        greenlet), so one implementation connects for both sides.
        """
        engines = self.engines(is_async=is_async)
        if not engines:
            return None
        start = next(self._cursor)
        for offset in range(len(engines)):
            engine = engines[(start + offset) % len(engines)]
            if self._answers(engine):
                self._all_down_logged = False
                return engine
        if not self._all_down_logged:
            self._all_down_logged = True
            logger.warning("no read replica answers: reading from the primary")
        return None

    def _answers(self, engine: Engine) -> bool:
        health = self._health.setdefault(id(engine), _Health())
        now = time.monotonic()
        if health.down_until > now:
            return False
        try:
            with engine.connect():
                pass
        except Exception as exc:
            health.backoff = min(MAX_BACKOFF, (health.backoff * 2) or FIRST_BACKOFF)
            health.down_until = now + health.backoff
            reason = _urls.mask_text(str(getattr(exc, "orig", None) or exc)).strip()
            logger.warning(
                "read replica %s is down, skipped for %gs: %s: %s",
                _urls.render(engine.url),
                health.backoff,
                type(exc).__name__,
                reason.splitlines()[0] if reason else "",
            )
            return False
        if health.backoff:
            logger.warning("read replica %s is back", _urls.render(engine.url))
            health.backoff = 0.0
        return True

    def route(self, session: Session, *, read: bool, key: int) -> None:
        """Give a new session (an ``AsyncSession``'s sync session) its :class:`Router`.

        The session's own bind is the primary. ``read``: read-only work, whose reads go to a
        replica; ``key`` identifies the database in the request's record of writes.
        """
        if self._urls and isinstance(session.bind, Engine):
            primary = session.bind
            router = Router(primary, self, primary.dialect.is_async, read, context_writes(key))
            session.info[ROUTER] = router

    def dispose(self) -> None:
        """Close the sync replicas' pooled connections (the engines are recreated on next use)."""
        with self._lock:
            engines, self._engines[False] = self._engines[False] or [], None
        for engine in engines:
            engine.dispose()
            logger.info("disposed sync engine for %s", _urls.render(engine.url))

    def after_fork(self) -> None:
        """In a forked child: drop the parent's pooled replica connections without closing them."""
        for engines in self._engines.values():
            for engine in engines or ():
                _compat.forget_parent_connections(engine)

    async def async_dispose(self) -> None:
        """Async twin of :meth:`dispose`."""
        for engine in self.take_async_engines():
            await engine.dispose()
            logger.info("disposed async engine for %s", _urls.render(engine.url))

    def take_async_engines(self) -> list[AsyncEngine]:
        """Forget the async engines (for disposal); they are recreated on next use."""
        with self._lock:
            engines, self._engines[True] = self._engines[True] or [], None
        return [_async_view(engine) for engine in engines]


# -- read-your-writes across the sessions of a request ----------------------------------------


@dataclass(eq=False, slots=True)
class Writes:
    """Whether the current request (or sticky window) has written: its reads use the primary."""

    wrote: bool = False
    """This request wrote, or its client is inside a sticky window: read from the primary."""
    on_first_write: Callable[[], None] | None = None
    """Called at the request's own first write (opens, or extends, the client's window)."""

    def record(self) -> None:
        self.wrote = True
        callback, self.on_first_write = self.on_first_write, None
        if callback is not None:
            callback()


_writes: ContextVar[dict[int, Writes] | None] = ContextVar("fastapi_dbsession.writes", default=None)


def enter_request(store: dict[int, Writes]) -> None:
    """Make ``store`` (kept in the request's scope) the context's record of writes."""
    _writes.set(store)


def context_writes(key: int) -> Writes | None:
    """The current request's record of writes for one database (None outside requests)."""
    store = _writes.get()
    return None if store is None else store.get(key)


_WRITE_TEXT = re.compile(
    r"^\s*(insert|update|delete|merge|create|alter|drop|truncate|grant|revoke|copy|call|do|lock)\b"
    r"|\bfor\s+(no\s+key\s+)?update\b|\bfor\s+(key\s+)?share\b",
    re.IGNORECASE,
)


def is_write(clause: object) -> bool:
    """A statement the primary must run: ``INSERT`` / ``UPDATE`` / ``DELETE``, a locking
    ``SELECT`` (``FOR UPDATE`` / ``FOR SHARE``), or raw SQL text that starts with a write
    keyword or locks rows."""
    if isinstance(clause, UpdateBase):
        return True
    if isinstance(clause, TextClause):
        return _WRITE_TEXT.search(clause.text) is not None
    return getattr(clause, "_for_update_arg", None) is not None


@dataclass(eq=False, slots=True)
class Router:
    """Where one session's statements go (see the module docstring)."""

    primary: Engine
    replicas: ReplicaSet
    is_async: bool
    read: bool
    writes: Writes | None
    pinned: bool = False
    replica: Engine | None = field(default=None)

    def bind_for(self, default: object, clause: object, *, flushing: bool) -> object:
        """The engine for a statement; ``default`` is what the session would use itself."""
        if default is not self.primary:
            return default  # a bind of the user's own (Session(binds=...)): left alone
        if flushing or is_write(clause):
            self.pinned = True
            if self.writes is not None:
                self.writes.record()
        if not self.read or self.pinned or (self.writes is not None and self.writes.wrote):
            return self.primary
        if self.replica is None:
            self.replica = self.replicas.pick(is_async=self.is_async) or self.primary
        return self.replica


@dataclass(frozen=True, slots=True)
class StickyWindow:
    """Keep a client's reads on the primary for ``seconds`` after one of its requests wrote.

    The request that writes sets a cookie (or a response header, which the client sends back)
    holding the moment until which that client's read-only work uses the primary; requests
    that bring it back within the window read from the primary, as Rails' ``DatabaseSelector``
    does with its ``delay``. Give exactly one of ``cookie`` and ``header``.

    Args:
        seconds: How long after a write the client's reads stay on the primary (Rails: 2 s).
        cookie: Name of the cookie to set and read.
        header: Name of the header to set on the response and read from the request.

    Example:
        >>> db = DatabaseSessionManager(url, replica_urls=[replica],
        ...                             sticky_window=StickyWindow(2.0, cookie="db_wrote"))
    """

    seconds: float
    cookie: str | None = None
    header: str | None = None

    def __post_init__(self) -> None:
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise ConfigurationError(
                f"StickyWindow(seconds={seconds!r}): seconds must be a positive number, e.g. "
                "StickyWindow(2.0, cookie='db_wrote')."
            )
        if (self.cookie is None) == (self.header is None):
            raise ConfigurationError(
                "StickyWindow needs exactly one of cookie= and header=: the name under which "
                "the client carries the end of its window, e.g. StickyWindow(2.0, "
                "cookie='db_wrote')."
            )

    def is_open(self, value: str | None, now: float) -> bool:
        """Whether a carried value (an end of window, epoch seconds) is still in the future."""
        if not value:
            return False
        try:
            until = float(value)
        except ValueError:
            return False
        return now < until <= now + self.seconds  # a forged far-future value is ignored


def _async_view(sync_engine: Engine) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import AsyncEngine

    return AsyncEngine(sync_engine)  # a new proxy of the same engine: disposes its pool


def pair_replicas(urls: object) -> tuple[tuple[URL | None, URL | None], ...]:
    """Parse each replica URL and derive its other side, as for the primary."""
    if isinstance(urls, str | URL) or not isinstance(urls, Sequence | tuple | list):
        raise ConfigurationError(
            f"replica_urls must be a list of URLs, not {type(urls).__name__}: "
            'replica_urls=["postgresql+psycopg://app@replica1/app"].'
        )
    pairs: list[tuple[URL | None, URL | None]] = []
    for index, value in enumerate(urls):
        url = _urls.parse(value, argument=f"replica_urls[{index}]")
        if _urls.is_async_driver(url):
            pairs.append((_urls.sync_twin(url), url))
        else:
            pairs.append((url, _urls.async_twin(url)))
    return tuple(pairs)


def check_sticky(sticky: object, replica_urls: object) -> StickyWindow | None:
    """The manager's ``sticky_window`` argument, checked."""
    if sticky is None:
        return None
    if not isinstance(sticky, StickyWindow):
        raise ConfigurationError(
            f"sticky_window must be a StickyWindow, not {type(sticky).__name__}: "
            "sticky_window=StickyWindow(2.0, cookie='db_wrote')."
        )
    if not replica_urls:
        raise ConfigurationError(
            "sticky_window keeps reads on the primary after a write, but this manager has no "
            "replica_urls, so every read already uses the primary. Pass replica_urls=[...] "
            "or drop sticky_window."
        )
    return sticky


def check_twophase(twophase: object, urls: Sequence[URL | None]) -> bool:
    """The manager's ``twophase`` argument, checked against the backends (its binds' too)."""
    if twophase is not True:
        raise ConfigurationError(f"twophase must be True or False, not {twophase!r}.")
    for url in urls:
        if url is not None and url.get_backend_name() != "postgresql":
            why = ""
            if url.get_backend_name() in ("mysql", "mariadb"):
                why = (
                    " MariaDB/MySQL XA is left out: after a deadlock the XA branch is ROLLBACK "
                    "ONLY and SQLAlchemy's rollback of it fails (XA END: 1399 XAER_RMFAIL) "
                    "instead of rolling back (docs: Scaling out, Two-phase commit)."
                )
            raise ConfigurationError(
                f"twophase=True needs PostgreSQL (PREPARE TRANSACTION), not "
                f"{url.get_backend_name()} "
                f"({_urls.render(url)}): leave it off; a request that writes to several "
                f"databases then commits them one after another and reports a partial commit.{why}"
            )
    return True
