"""Warn about sessions that hold a connection too long, or are garbage-collected while open.

Opt-in (``hold_warning_threshold=``): each session the manager makes then carries a
:class:`Hold` in ``session.info``, saying what it is for (a request's route, or the code that
opened the unit of work) and when its transaction took a connection. Two listeners on
``Session`` (installed once, doing nothing for sessions without a ``Hold``) time the
transaction from its connection to its end; a ``weakref.finalize`` reports a session that the
garbage collector reclaims while its transaction still holds a connection.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from ._recording import issuing_location

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import SessionTransaction

hold_logger = logging.getLogger("fastapi_dbsession.holds")

_KEY = "fastapi_dbsession.hold"
_installed = threading.Lock()
_listening = False


@dataclass(slots=True)
class Hold:
    """What one watched session is for, and since when its transaction holds a connection."""

    threshold: float
    database: str
    made_at: str
    """``path:line in function`` of the code that made the session (outside the library)."""
    request: str | None = None
    """``GET /items/{item_id}``, for a request session."""
    describe_origin: Callable[[], str] | None = None
    """Computes, only when a warning is written, which dependency asked for the session."""
    since: float | None = None

    def origin(self) -> str:
        """Where the session was made, for the log line."""
        if self.describe_origin is not None:
            return self.describe_origin()
        return f"made at {self.made_at}"

    def subject(self) -> str:
        return self.request or "a unit of work"


def watch(session: Session, threshold: float, database: str) -> Hold:
    """Start watching ``session`` (a sync session, or an AsyncSession's sync one)."""
    _listen_once()
    hold = Hold(threshold, database, issuing_location())
    session.info[_KEY] = hold
    weakref.finalize(session, _collected, hold)
    return hold


def hold_of(session: object) -> Hold | None:
    """The :class:`Hold` of a watched session (sync or async), else None."""
    sync_session = getattr(session, "sync_session", session)
    info = sync_session.__dict__.get("info")
    return None if info is None else info.get(_KEY)


def _listen_once() -> None:
    global _listening  # noqa: PLW0603 -- one set of class listeners for the process
    with _installed:
        if not _listening:
            event.listen(Session, "after_begin", _after_begin)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
            _listening = True


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    hold: Hold | None = session.info.get(_KEY) if "info" in session.__dict__ else None
    if hold is not None and hold.since is None:
        hold.since = time.monotonic()


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None or "info" not in session.__dict__:
        return  # a savepoint, or a session nobody watches
    hold: Hold | None = session.info.get(_KEY)
    if hold is None or hold.since is None:
        return
    held = time.monotonic() - hold.since
    hold.since = None
    if held >= hold.threshold:
        hold_logger.warning(
            "%s held a database connection in an open transaction for %.1f s "
            "(hold_warning_threshold %g s) on database %s; the session was %s",
            hold.subject(),
            held,
            hold.threshold,
            hold.database,
            hold.origin(),
            extra={
                "request": hold.request,
                "database": hold.database,
                "held_seconds": held,
                "made_at": hold.made_at,
            },
        )


def _collected(hold: Hold) -> None:
    if hold.since is None:
        return  # closed properly, or never took a connection
    hold_logger.warning(
        "A session of database %s was garbage-collected with its transaction still open "
        "(for %.1f s): its connection was returned to the pool only by the garbage collector. "
        "The session was %s. Close every session: use db.transaction() / @db.transactional, "
        "or call session.close() in a finally block.",
        hold.database,
        time.monotonic() - hold.since,
        hold.origin(),
        extra={"request": hold.request, "database": hold.database, "made_at": hold.made_at},
    )


def asked_by(route: object, dependency: object) -> str:
    """``requested by Depends(db.session) in get_user (app/auth.py:12)``, found in the route."""
    found: list[object] = []

    def walk(dependant: Any) -> None:
        for child in getattr(dependant, "dependencies", ()):
            if child.call is dependency:
                found.append(dependant.call)
            walk(child)

    walk(getattr(route, "dependant", None))
    if not found:
        return "made for this request by Depends(db.session)"
    where = []
    for function in dict.fromkeys(found):  # each dependant once, outermost first
        code = getattr(function, "__code__", None)
        name = getattr(function, "__qualname__", repr(function))
        place = "" if code is None else f" ({code.co_filename}:{code.co_firstlineno})"
        where.append(f"{name}{place}")
    return "made for this request by Depends(db.session) in " + ", ".join(where)
