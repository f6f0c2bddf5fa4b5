"""Open units of work outside requests: ``db.transaction()`` and ``db.async_transaction()``.

Thin shells: the decisions live in ``_units.unit_flow``; these only hand its session to the
``with`` block and report how the block ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from anyio import CancelScope

from ._units import UnitOptions, adrive, async_frames, drive, sync_frames, unit_flow

if TYPE_CHECKING:
    from .manager import DatabaseSessionManager


@contextmanager
def transaction(manager: DatabaseSessionManager, options: UnitOptions) -> Iterator[Any]:
    """Run the ``with`` block as a unit of work (see ``DatabaseSessionManager.transaction``)."""
    flow = unit_flow(manager, sync_frames, options, is_async=False)
    session = drive(flow)
    try:
        yield session
    except BaseException as error:
        drive(flow, error=error)  # rolls back (or marks rollback-only), then re-raises
        raise
    drive(flow)


@asynccontextmanager
async def async_transaction(
    manager: DatabaseSessionManager, options: UnitOptions
) -> AsyncIterator[Any]:
    """Async twin of :func:`transaction`."""
    flow = unit_flow(manager, async_frames, options, is_async=True)
    session = await adrive(flow)
    try:
        yield session
    except BaseException as error:
        with CancelScope(shield=True):  # a cancelled task still rolls back and closes
            await adrive(flow, error=error)
        raise
    with CancelScope(shield=True):
        await adrive(flow)
