"""Open units of work outside requests: ``db.transaction()`` and ``db.async_transaction()``.

Thin shells: the decisions live in ``_units.unit_flow``; these only hand its session to the
``with`` block and report how the block ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from anyio import CancelScope

from ._frames import async_frames, sync_frames
from ._units import async_drive, drive, unit_flow

if TYPE_CHECKING:
    from ._database import Database
    from .propagation import UnitOptions


@contextmanager
def transaction(database: Database, options: UnitOptions) -> Iterator[Any]:
    """Run the ``with`` block as a unit of work (``db.transaction()``)."""
    flow = unit_flow(database, sync_frames, options, is_async=False)
    session = drive(flow)
    try:
        yield session
    except BaseException as error:
        drive(flow, error=error)  # rolls back (or marks rollback-only), then re-raises
        raise
    drive(flow)


@asynccontextmanager
async def async_transaction(database: Database, options: UnitOptions) -> AsyncIterator[Any]:
    """Async twin of :func:`transaction`."""
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
