"""Switch ``retries=N`` off while a test runs, so a conflict fails the test at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi_dbsession.decorators import RETRIES


@contextmanager
def retries_disabled() -> Iterator[None]:
    """Make every ``@transactional(retries=N)`` raise its first serialization failure or deadlock.

    Process-wide while the block runs (worker threads and every event loop), nestable. The
    unit's transaction is still rolled back, and the skipped retry is logged (logger
    ``fastapi_dbsession.retries``, ``not retried: retries are switched off``). The pytest
    fixture ``db_no_retries`` does the same for one test.

    Example:
        >>> with retries_disabled():
        ...     with pytest.raises(DBAPIError):
        ...         transfer(a, b, 10)  # the conflict surfaces instead of being re-run
    """
    RETRIES.switch_off()
    try:
        yield
    finally:
        RETRIES.switch_on()
