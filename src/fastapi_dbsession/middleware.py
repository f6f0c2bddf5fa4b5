"""Put a request's SQL figures in a ``Server-Timing`` response header: the ASGI middleware."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._recording import SCOPE_KEY, QueryStats, server_timing

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ServerTimingMiddleware:
    """Add ``Server-Timing: db;dur=4.2;desc="app: 3 queries"`` to each HTTP response.

    The figures are those of the managers built with ``record_queries=True`` whose request
    session the request used (one entry per manager; none when it used none). They cover
    every statement of the request, the commit included: the request session ends before the
    response starts. Browsers show the header in their developer tools' timing tab.

    Example:
        >>> db = DatabaseSessionManager(url, record_queries=True)
        >>> app = FastAPI(lifespan=db.lifespan)
        >>> app.add_middleware(ServerTimingMiddleware)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entries: list[QueryStats] = []
        scope[SCOPE_KEY] = entries  # shared with the route's scope, even when it is a copy

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start" and entries:
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"server-timing", server_timing(entries)),
                ]
            await send(message)

        await self.app(scope, receive, send_with_timing)
