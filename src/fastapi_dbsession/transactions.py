"""Open units of work outside requests: ``db.transaction()`` and ``db.async_transaction()``.

Thin shells: the decisions live in ``_units.unit_flow``; these only hand its session to the
``with`` block and report how the block ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import TYPE_CHECKING, Any

from anyio import CancelScope

from ._frames import async_frames, sync_frames
from ._units import async_drive, drive, unit_flow
from .errors import SyncAsyncMismatchError

if TYPE_CHECKING:
    from ._database import Database
    from .propagation import UnitOptions


def transaction(database: Database, options: UnitOptions) -> AbstractContextManager[Any]:
    """Run the ``with`` block as a unit of work (``db.transaction()``)."""
    return _SyncBlock(_transaction(database, options))


def async_transaction(database: Database, options: UnitOptions) -> AbstractAsyncContextManager[Any]:
    """Async twin of :func:`transaction`."""
    return _AsyncBlock(_async_transaction(database, options))


class _SyncBlock(AbstractContextManager[Any]):
    """``db.transaction()``: a ``with`` block; ``async with`` gets an error naming the twin."""

    __slots__ = ("_block",)

    def __init__(self, block: AbstractContextManager[Any]) -> None:
        self._block = block

    def __enter__(self) -> Any:
        return self._block.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._block.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        raise SyncAsyncMismatchError(
            "'async with db.transaction()': db.transaction() is the sync unit of work, for "
            "'with' blocks. In async code, write 'async with db.async_transaction() as "
            "session:' (it gives an AsyncSession)."
        )

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


class _AsyncBlock(AbstractAsyncContextManager[Any]):
    """``db.async_transaction()``: an ``async with`` block; ``with`` gets an error."""

    __slots__ = ("_block",)

    def __init__(self, block: AbstractAsyncContextManager[Any]) -> None:
        self._block = block

    async def __aenter__(self) -> Any:
        return await self._block.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._block.__aexit__(*exc_info)

    def __enter__(self) -> Any:
        raise SyncAsyncMismatchError(
            "'with db.async_transaction()': db.async_transaction() needs 'async with "
            "db.async_transaction() as session:' inside an async function. In sync code, write "
            "'with db.transaction() as session:' (it gives a Session)."
        )

    def __exit__(self, *exc_info: Any) -> None:
        return None


@contextmanager
def _transaction(database: Database, options: UnitOptions) -> Iterator[Any]:
    flow = unit_flow(database, sync_frames, options, is_async=False)
    session = drive(flow)
    try:
        yield session
    except BaseException as error:
        drive(flow, error=error)  # rolls back (or marks rollback-only), then re-raises
        raise
    drive(flow)


@asynccontextmanager
async def _async_transaction(database: Database, options: UnitOptions) -> AsyncIterator[Any]:
    flow = unit_flow(database, async_frames, options, is_async=True)
    session = await async_drive(flow)
    try:
        yield session
    except BaseException as error:
        with CancelScope(shield=True):  # a cancelled task still rolls back and closes
            await async_drive(flow, error=error)
        raise
    with CancelScope(shield=True):
        await async_drive(flow)
