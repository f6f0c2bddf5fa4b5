"""Keep driver, pool and interpreter differences in one place."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.pool import Pool, QueuePool, StaticPool

from ._urls import install_hint
from .errors import MissingDriverError

if TYPE_CHECKING:
    from types import ModuleType

    from sqlalchemy.engine import Engine


def require_asyncio() -> ModuleType:
    """Import ``sqlalchemy.ext.asyncio`` or say which extra brings greenlet.

    SQLAlchemy 2.1 no longer installs greenlet by default, and its asyncio extension cannot
    run without it, so every async feature goes through here first.
    """
    try:
        import greenlet  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise MissingDriverError(
            "The async side of fastapi-dbsession needs greenlet, which is not installed "
            "(SQLAlchemy 2.1 no longer installs it by default). Install it with "
            f"{install_hint('greenlet')}."
        ) from None
    import sqlalchemy.ext.asyncio

    return sqlalchemy.ext.asyncio


def require_module(name: str, *, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra of ours brings it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDriverError(
            f"This needs the Python module {name!r}, which is not installed. Install it with: "
            f'pip install "fastapi-dbsession[{extra}]".'
        ) from None


def pool_capacity(pool: Pool) -> int | None:
    """Return how many connections ``pool`` can hand out at once, or None for unbounded."""
    if isinstance(pool, StaticPool):
        return 1  # one shared connection: request sessions must take turns on it
    if isinstance(pool, QueuePool):
        max_overflow: int = getattr(pool, "_max_overflow", 0)
        if max_overflow < 0:
            return None
        return pool.size() + max_overflow
    return None  # NullPool, SingletonThreadPool, custom pools: no bound we can rely on


def pool_timeout(pool: Pool) -> float:
    """Return the pool's checkout timeout in seconds (30, SQLAlchemy's default, if unknown)."""
    timeout = getattr(pool, "_timeout", 30.0)
    return float(timeout) if isinstance(timeout, int | float) else 30.0


_OUR_FILES = str(Path(__file__).resolve().parent)
_PLUMBING = ("contextlib.py", "functools.py")


def warn(message: str, category: type[Warning]) -> None:
    """Warn at the user's line: the first caller outside this package and contextlib."""
    frame = inspect.currentframe()
    assert frame is not None  # CPython and PyPy both have frames
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_OUR_FILES)
        or frame.f_code.co_filename.endswith(_PLUMBING)
    ):
        frame = frame.f_back
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
    )


_INHERITED_POOLS: list[Pool] = []
"""In a forked child: the parent's pools, referenced until the child exits."""


def forget_parent_connections(engine: Engine) -> None:
    """In a forked child: give ``engine`` an empty pool, never touching the parent's connections.

    SQLAlchemy's recipe for pre-fork servers is ``engine.dispose(close=False)``. The old pool is
    also kept referenced: garbage-collected in the child, an asyncio driver's connection closes
    its transport on the parent's event loop object, whose epoll instance the child shares with
    the parent (a fork copies the descriptor, not the instance). Unregistering the socket there
    leaves the parent's loop deaf to that connection: its next statement waits forever.
    """
    _INHERITED_POOLS.append(engine.pool)
    engine.dispose(close=False)
