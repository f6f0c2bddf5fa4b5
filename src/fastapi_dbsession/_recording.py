"""Record the SQL statements an engine runs: per-request figures and the slow-query log.

Opt-in: a :class:`QueryRecorder` exists only when the manager was asked to record queries or
to log slow ones, and only then does the statement wrapper of its engines (``_roundtrips``)
time each statement. With both off, nothing is wrapped and nothing runs per statement.

Statements are attributed to the request (or unit) whose context runs them through a context
variable holding a mutable :class:`QueryStats`: a sync endpoint's worker thread and an
``AsyncSession``'s greenlet both see the object set by the request dependency.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import FrameType
from typing import Any

query_logger = logging.getLogger("fastapi_dbsession.queries")
slow_query_logger = logging.getLogger("fastapi_dbsession.slow_queries")

SCOPE_KEY = "fastapi_dbsession.queries"
"""ASGI scope key: the list of :class:`QueryStats` of the request (one per manager)."""

_SHOWN_STATEMENT = 2000  # characters of a slow statement (and of its parameters) in the log

# Modules whose frames are not "the code that issued the statement".
_LIBRARY_MODULES = (
    "sqlalchemy",
    "fastapi_dbsession",
    "greenlet",
    "asyncio",
    "anyio",
    "starlette",
    "fastapi",
    "threading",
    "concurrent",
    "contextlib",
    "functools",
)


@dataclass(frozen=True, slots=True)
class Observability:
    """What the manager was asked to watch (all off by default)."""

    record_queries: bool = False
    """Count and time every request's statements; log a line per request."""
    slow_query_threshold: float | None = None
    """Log statements that take at least this many seconds (None: no slow-query log)."""
    log_query_parameters: bool = False
    """Show the parameters of slow statements (hidden by default: they may be personal data)."""
    hold_warning_threshold: float | None = None
    """Warn about sessions holding a connection this long; report open ones collected."""

    @property
    def watches_queries(self) -> bool:
        """Whether engine listeners are needed at all."""
        return self.record_queries or self.slow_query_threshold is not None


@dataclass(slots=True)
class QueryStats:
    """The statements of one request (or unit): how many, and their total time."""

    label: str
    """What ran them: ``GET /items/{item_id}``, for a request."""
    database: str
    """The manager's name, for the log line and the ``Server-Timing`` entry."""
    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        """Count one statement that took ``seconds``."""
        self.count += 1
        self.seconds += seconds


class QueryRecorder:
    """The engine listeners of one database, and the context variable they report to."""

    __slots__ = ("current", "database", "observability")

    def __init__(self, observability: Observability, database: str) -> None:
        self.observability = observability
        self.database = database
        self.current: ContextVar[QueryStats | None] = ContextVar(
            f"fastapi_dbsession.queries.{database}", default=None
        )

    def start(
        self, label: str, scope: MutableMapping[str, Any] | None = None
    ) -> tuple[QueryStats, Token[QueryStats | None]]:
        """Begin recording the statements of the current context (a request)."""
        stats = QueryStats(label, self.database)
        if scope is not None:
            scope.setdefault(SCOPE_KEY, []).append(stats)
        return stats, self.current.set(stats)

    def stop(self, stats: QueryStats, token: Token[QueryStats | None]) -> None:
        """End recording and log the request's figures."""
        self.current.reset(token)
        if self.observability.record_queries:
            query_logger.info(
                "%s: %d SQL statement%s in %.1f ms (database %s)",
                stats.label,
                stats.count,
                "" if stats.count == 1 else "s",
                stats.seconds * 1000,
                stats.database,
                extra={
                    "request": stats.label,
                    "database": stats.database,
                    "statements": stats.count,
                    "sql_seconds": stats.seconds,
                },
            )

    def after(self, elapsed: float, statement: str, parameters: object) -> None:
        """Count one statement that took ``elapsed`` seconds; log it if it was slow.

        Called by the statement wrapper of ``_roundtrips``, which times the engine's
        statements (the dialect's ``do_execute`` methods) rather than listening to
        ``before_cursor_execute`` / ``after_cursor_execute``: an engine event listener makes
        SQLAlchemy dispatch connection events around every statement, begin and commit.
        """
        stats = self.current.get()
        if stats is not None:
            stats.add(elapsed)
        threshold = self.observability.slow_query_threshold
        if threshold is not None and elapsed >= threshold:
            self._log_slow(elapsed, threshold, statement, parameters, stats)

    def _log_slow(
        self,
        elapsed: float,
        threshold: float,
        statement: str,
        parameters: object,
        stats: QueryStats | None,
    ) -> None:
        location = issuing_location()
        if self.observability.log_query_parameters:
            shown_parameters = _shorten(repr(parameters))
        else:
            shown_parameters = "hidden (log_query_parameters=True shows them)"
        slow_query_logger.warning(
            "slow SQL statement: %.3f s (threshold %g s) on database %s, issued at %s%s: %s "
            "[parameters: %s]",
            elapsed,
            threshold,
            self.database,
            location,
            "" if stats is None else f" during {stats.label}",
            _shorten(" ".join(statement.split())),
            shown_parameters,
            extra={
                "database": self.database,
                "sql_seconds": elapsed,
                "location": location,
                "request": None if stats is None else stats.label,
            },
        )


def _shorten(text: str) -> str:
    if len(text) <= _SHOWN_STATEMENT:
        return text
    return f"{text[:_SHOWN_STATEMENT]}... ({len(text)} characters)"


def issuing_location() -> str:
    """``path:line in function`` of the first frame outside SQLAlchemy and this library.

    In an ``AsyncSession``'s greenlet, the frames of the coroutine that awaited the operation
    are in the parent greenlet: the walk continues there.
    """
    here = inspect.currentframe()
    frame: FrameType | None = None if here is None else here.f_back
    parents = _greenlet_parents()
    while True:
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not module.startswith(_LIBRARY_MODULES):
                return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            frame = frame.f_back
        frame = next(parents, None)
        if frame is None:
            return "(no caller outside the library)"


def _greenlet_parents() -> Any:
    """The suspended frames of the current greenlet's parents, innermost first."""
    try:
        import greenlet  # type: ignore[import-untyped]
    except ImportError:
        return iter(())
    current = greenlet.getcurrent().parent
    frames: list[FrameType] = []
    while current is not None:
        if current.gr_frame is not None:
            frames.append(current.gr_frame)
        current = current.parent
    return iter(frames)


def request_label(method: str | None, route_path: str | None, path: str) -> str:
    """``GET /items/{item_id}``: the route's template when FastAPI matched one, else the path."""
    return f"{method or 'WEBSOCKET'} {route_path or path}"


def server_timing(entries: list[QueryStats]) -> bytes:
    """The ``Server-Timing`` header value for a request's statements (one entry per manager)."""
    return ", ".join(
        f'db;dur={stats.seconds * 1000:.1f};desc="{stats.database}: {stats.count} queries"'
        if len(entries) == 1
        else f'db-{stats.database};dur={stats.seconds * 1000:.1f};desc="{stats.count} queries"'
        for stats in entries
    ).encode("latin-1")
