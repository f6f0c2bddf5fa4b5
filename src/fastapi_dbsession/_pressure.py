"""Report how full a connection pool is, and warn (rate-limited) when it nears saturation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event

from . import _compat, _urls

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    from ._capacity import CapacityGate

logger = logging.getLogger(__name__)

WARNING_INTERVAL = 60.0
"""Seconds between two saturation warnings of one pool."""


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of one engine's pool: ``db.pool_status()`` returns one per engine created.

    Attributes:
        side: ``"sync"`` or ``"async"``.
        size: The pool's ``pool_size`` (None for pools without one: ``NullPool``, ...).
        checked_out: Connections lent out right now.
        overflow: Connections open beyond ``pool_size`` (negative while the pool is still
            filling up, as SQLAlchemy counts it; None for pools without one).
        capacity: How many connections the pool can lend at once (``pool_size +
            max_overflow``; None: unbounded).
        waiting: Requests waiting for a connection at the library's capacity gate (sync side;
            None on the async side, whose requests wait inside SQLAlchemy's pool, which does
            not count them).
    """

    side: Literal["sync", "async"]
    size: int | None
    checked_out: int
    overflow: int | None
    capacity: int | None
    waiting: int | None

    @property
    def saturation(self) -> float | None:
        """``checked_out / capacity`` (0.0 to 1.0), None for an unbounded pool."""
        if not self.capacity:
            return None
        return self.checked_out / self.capacity


def _count(pool: Pool, method: str) -> int | None:
    counter = getattr(pool, method, None)
    return int(counter()) if callable(counter) else None


def pool_status(
    pool: Pool, *, side: Literal["sync", "async"], gate: CapacityGate | None
) -> PoolStatus:
    """Read ``pool``'s public counters (and the gate's queue) into a :class:`PoolStatus`."""
    return PoolStatus(
        side=side,
        size=_count(pool, "size"),
        checked_out=_count(pool, "checkedout") or 0,
        overflow=_count(pool, "overflow"),
        capacity=_compat.pool_capacity(pool),
        waiting=None if side == "async" else (gate.waiting if gate is not None else 0),
    )


def install_saturation_warning(engine: Engine, threshold: float, *, side: str) -> None:
    """Log a WARNING, at most once a minute, when a checkout leaves the pool >= ``threshold`` full.

    Nothing is installed for unbounded pools; with the warning off (``threshold`` None, decided
    by the caller), nothing at all is installed, so checkouts cost what they cost before.
    """
    pool = engine.pool
    capacity = _compat.pool_capacity(pool)
    if capacity is None or not hasattr(pool, "checkedout"):
        return
    limit = max(1, min(capacity, int(-(-threshold * capacity // 1))))  # ceil, in 1..capacity
    shown = _urls.render(engine.url)
    last_warning = [-WARNING_INTERVAL]

    def on_checkout(*_: Any) -> None:
        checked_out = pool.checkedout()
        if checked_out < limit:
            return
        now = time.monotonic()
        if now - last_warning[0] < WARNING_INTERVAL:
            return
        last_warning[0] = now
        logger.warning(
            "connection pool nearly exhausted: %d of %d connections checked out (%d%%, "
            "warning at %d%%) on the %s pool for %s; requests beyond it wait up to "
            "pool_timeout, then get 503. Raise pool_size / max_overflow, or look for requests "
            "that hold their session for long (slow queries, calls to other services)",
            checked_out,
            capacity,
            round(100 * checked_out / capacity),
            round(100 * threshold),
            side,
            shown,
        )

    event.listen(pool, "checkout", on_checkout)
