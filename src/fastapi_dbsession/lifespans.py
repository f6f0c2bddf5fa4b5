"""Compose several lifespans into one, for apps with several databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def compose_lifespans(*lifespans: Lifespan) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Run several lifespans as one: started in the order given, shut down in reverse.

    Each manager's ``db.lifespan`` checks its database at startup and disposes its engines at
    shutdown; your own lifespans can be mixed in. If one fails to start, those already started
    are shut down before the error propagates. The state dicts the lifespans yield (Starlette's
    lifespan state, ``request.state``) are merged, later ones winning.

    Args:
        *lifespans: Lifespan functions: called with the app, each returns an async context
            manager (``db.lifespan``, an ``@asynccontextmanager`` function).

    Returns:
        One lifespan function for ``FastAPI(lifespan=...)``.

    Example:
        >>> app = FastAPI(lifespan=compose_lifespans(users_db.lifespan, orders_db.lifespan))
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any] | None]:
        state: dict[str, Any] = {}
        async with AsyncExitStack() as stack:
            for each in lifespans:
                value = await stack.enter_async_context(each(app))
                if isinstance(value, Mapping):
                    state.update(value)
            yield state or None

    return lifespan
