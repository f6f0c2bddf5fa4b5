"""Refuse ``def`` endpoints that take the AsyncSession: at startup, or at their first request."""

# No "from __future__ import annotations": endpoint signatures are read at runtime.
import inspect
import warnings
import weakref
from typing import Any

from fastapi import params

from .errors import DBSessionWarning, SyncAsyncMismatchError


class EndpointGuard:
    """Refuse a ``def`` endpoint that takes the AsyncSession: at startup, or its first request.

    A ``def`` endpoint runs in a worker thread: the AsyncSession's methods return coroutines
    it cannot await, and FastAPI would answer 200 with ``"<coroutine ...>"``. Each endpoint is
    judged once (a set look-up per request after that).
    """

    __slots__ = ("dependency", "seen")

    def __init__(self) -> None:
        self.dependency: object = None
        self.seen: set[int] = set()

    def check(self, scope: Any) -> None:
        endpoint = scope.get("endpoint")
        if id(endpoint) in self.seen:
            return
        message = self.misuse(endpoint)
        if message is not None:
            raise SyncAsyncMismatchError(message)
        self.seen.add(id(endpoint))

    def misuse(self, endpoint: object) -> str | None:
        """Why ``endpoint`` cannot take this AsyncSession, or None when it can."""
        if not callable(endpoint) or _is_async_callable(endpoint):
            return None
        if not any(self._asks_for_it(p) for p in _parameters(endpoint)):
            return None
        name = getattr(endpoint, "__qualname__", repr(endpoint))
        return (
            f"{name} is a def endpoint, but it depends on db.async_session: a def endpoint "
            "runs in a worker thread and cannot await the AsyncSession (its calls return "
            'coroutines that never run; FastAPI would answer 200 with "<coroutine ...>"). '
            "Make the endpoint an async def, or use Depends(db.session) for a sync Session."
        )

    def _asks_for_it(self, parameter: inspect.Parameter) -> bool:
        markers = [parameter.default, *getattr(parameter.annotation, "__metadata__", ())]
        return any(
            isinstance(marker, params.Depends) and marker.dependency is self.dependency
            for marker in markers
        )


_GUARDS: "weakref.WeakKeyDictionary[object, EndpointGuard]" = weakref.WeakKeyDictionary()


def _is_async_callable(call: object) -> bool:
    function = call if inspect.isroutine(call) else getattr(call, "__call__", call)  # noqa: B004
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def _parameters(call: object) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(call, eval_str=True).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError, NameError):
        return []


def check_endpoints(app: object, async_session: object) -> None:
    """Refuse, at startup, ``def`` endpoints of ``app`` that take ``async_session``.

    Raises:
        SyncAsyncMismatchError: One does; the message names it and the fix.
    """
    guard = _GUARDS.get(async_session)
    if guard is None:
        return
    for route in getattr(app, "routes", ()):
        message = guard.misuse(getattr(route, "endpoint", None))
        if message is not None:
            raise SyncAsyncMismatchError(message)


def register(dependency: object, guard: EndpointGuard) -> None:
    """Remember which guard watches for ``dependency`` (``db.async_session``)."""
    _GUARDS[dependency] = guard


def warn_ignored_events(app: object) -> None:
    """Warn when the app has ``@app.on_event`` handlers: FastAPI skips them under a lifespan."""
    router = getattr(app, "router", None)
    handlers = [
        f"{kind}: {getattr(handler, '__qualname__', handler)!s}"
        for kind in ("startup", "shutdown")
        for handler in getattr(router, f"on_{kind}", None) or ()
    ]
    if handlers:
        warnings.warn(
            f"This app has @app.on_event handlers ({', '.join(handlers)}) and a lifespan "
            "(db.lifespan): FastAPI does not run on_event handlers when a lifespan is given, so "
            "they are skipped. Move their code into a lifespan of your own that enters "
            "db.lifespan(app) (docs/migrating.md, 'Startup events under a lifespan').",
            DBSessionWarning,
            stacklevel=2,
        )
