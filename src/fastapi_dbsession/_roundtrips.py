"""Wrap each statement an engine sends in one Python call: deadline, re-send, recording.

Three optional features act on every statement: ``command_timeout`` (the watchdog of
:mod:`._deadlines` must know when each statement began), the re-send of a first statement
that met a dead connection (:mod:`._liveness`) and query recording (:mod:`._recording`). Each
wrapped the dialect's ``do_execute`` methods on its own, so a statement passed up to three
Python call levels; here one wrapper per method does what the engine's features ask, and is
built again when a feature is added (query recording is installed after the engine is
created). It wraps the methods of the engine's dialect instance rather than listening to
events: any dialect event listener makes SQLAlchemy dispatch dialect events around every
statement (``do_setinputsizes`` included), which costs more than all three features.

A statement past its deadline invalidates its connection here (``Connection.invalidate``:
closed, never returned to the pool), the work a ``handle_error`` listener did before. The
deadline is innermost: a first statement cut by ``command_timeout`` is not re-sent (that would
wait again, on a new connection). Recording is outermost: a re-sent statement counts once,
with the time of both sends.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _deadlines, _liveness

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect, Engine

    from ._recording import QueryRecorder

logger = logging.getLogger(__name__)

_NAMES = ("do_execute", "do_execute_no_params", "do_executemany")


@dataclass(slots=True)
class _Features:
    """What one dialect's statements pass through, and the dialect's own methods."""

    originals: dict[str, Callable[..., object]]
    command_timeout: float | None = None
    resend: bool = False
    recorders: tuple[QueryRecorder, ...] = ()


_features: weakref.WeakKeyDictionary[Dialect, _Features] = weakref.WeakKeyDictionary()


def install(
    engine: Engine,
    *,
    command_timeout: float | None = None,
    resend: bool = False,
    recorder: QueryRecorder | None = None,
) -> None:
    """Add features to ``engine``'s statements (a sync engine, or an async engine's sync one).

    Args:
        command_timeout: Each statement's deadline in seconds (None: none).
        resend: Re-send a first statement since checkout that met a dead connection.
        recorder: Time and count each statement for this recorder.
    """
    dialect = engine.dialect
    features = _features.get(dialect)
    if features is None:
        originals = {name: getattr(dialect, name) for name in _NAMES}
        features = _features[dialect] = _Features(originals)
    if command_timeout is not None:
        features.command_timeout = command_timeout
    features.resend = features.resend or resend
    if recorder is not None:
        features.recorders += (recorder,)
    for name in _NAMES:
        setattr(dialect, name, _wrap(dialect, features.originals[name], features))


def _wrap(
    dialect: Dialect, send: Callable[..., object], features: _Features
) -> Callable[..., object]:
    """One of the dialect's ``do_execute`` methods with the features: one call level."""
    seconds, resend, recorders = features.command_timeout, features.resend, features.recorders
    if seconds is None and not resend and not recorders:
        return send
    watchdog = _deadlines.watchdog
    active, tokens, monotonic, clock = (
        watchdog.active,
        watchdog.tokens,
        time.monotonic,
        time.perf_counter,
    )
    of_context, first_mark = _deadlines.of_context, _liveness.FIRST

    def statement(*args: Any) -> object:  # (cursor, statement[, parameters], context)
        context: Any = args[-1] if len(args) > 2 else None
        first = False
        if resend and context is not None:  # the first statement since checkout? (inline)
            try:
                info = context.root_connection.connection.info
            except NotImplementedError:  # SQLAlchemy's own first-connect queries: no checkout
                info = None
            if info is not None and info.get(first_mark):
                info[first_mark], first = False, True
        started = clock() if recorders else 0.0
        token = 0
        while True:  # the arm / disarm of _deadlines._guarded, inlined: no call level of its own
            if seconds is not None:
                token = next(tokens)
                deadline = monotonic() + seconds
                active[token] = (deadline, of_context, args)
                if deadline < watchdog.next_wake:
                    watchdog.wake_up()
            try:
                result = send(*args)
            except Exception as exc:
                if seconds is not None and active.pop(token, None) is None:
                    raise _timed_out(seconds, context) from exc
                if not first:
                    raise
                first = False  # (first: context is not None)
                fresh = _liveness.replacement_cursor(dialect, context, exc)
                if fresh is None:
                    raise
                args = (fresh, *args[1:])
                continue
            if seconds is not None and active.pop(token, None) is None:
                raise _timed_out(seconds, context)  # answered just as the socket was shut down
            break
        for recorder in recorders:  # a failed statement is not counted
            recorder.after(clock() - started, args[1], args[2] if len(args) > 3 else None)
        return result

    return statement


def _timed_out(seconds: float, context: Any) -> Exception:
    """The error for a statement past its deadline, its connection invalidated."""
    error = _deadlines.timed_out(seconds)
    if context is not None:
        try:
            context.root_connection.invalidate(error)  # discard this connection only
        except Exception as exc:  # already closed or invalidated: nothing to discard
            logger.debug("could not invalidate the timed-out connection: %r", exc)
    return error
