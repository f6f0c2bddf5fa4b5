"""Make requests wait for pool capacity on the event loop instead of in a worker thread.

A sync endpoint checks out its connection inside one of the threadpool's workers. When more
requests arrive than the pool has connections, the workers block in the pool while the
requests that do hold connections wait for a free worker to serialize their response: the
pool starves until its timeout. The request session therefore takes a permit from this gate,
sized like the pool, *before* the endpoint runs; the wait costs a future, not a thread.

The gate is shared by every event loop that serves the manager (a test suite may run several
in turn), so it is guarded by a threading lock and wakes each waiter on its own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class _Waiter:
    __slots__ = ("future", "granted")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.granted = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class CapacityGate:
    """A counting semaphore for asyncio waiters on any loop, released from any thread."""

    __slots__ = ("_free", "_lock", "_waiters", "capacity", "timeout", "timeout_message")

    def __init__(self, capacity: int, timeout: float, timeout_message: str) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.timeout_message = timeout_message
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self, within: float) -> bool:
        """Take a permit, waiting up to ``within`` seconds; return False on timeout."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            waiter = _Waiter(asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter.future
        except TimeoutError:
            return not self._withdraw(waiter)  # granted in the same instant: keep it
        except BaseException:
            if not self._withdraw(waiter):
                self.release()  # granted, but our task is going away: pass it on
            raise
        return True

    def release(self) -> None:
        """Give a permit back, handing it straight to the oldest waiter if there is one."""
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            waiter = self._waiters.popleft()
            waiter.granted = True
        try:
            waiter.future.get_loop().call_soon_threadsafe(_wake, waiter.future)
        except RuntimeError:  # that waiter's loop is closed: give the permit to the next one
            self.release()

    @property
    def waiting(self) -> int:
        """How many requests are waiting for a permit right now."""
        return len(self._waiters)

    @property
    def in_use(self) -> int:
        """How many permits are held right now."""
        return self.capacity - self._free

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Take ``waiter`` off the queue; False if a permit was already granted to it."""
        with self._lock:
            if waiter.granted:
                return False
            self._waiters.remove(waiter)
            return True
