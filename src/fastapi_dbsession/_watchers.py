"""Hold what watches one database's engines and sessions: the :class:`Watchers`.

Query recording, hold-time watches, engine-created hooks and pool-gate observers are all
opt-in; a ``Database`` owns one ``Watchers`` and calls it when it creates an engine, and
when it creates a session if ``hold_threshold`` is set. With nothing switched on, a request
costs attribute checks, no call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _holds, _roundtrips
from ._recording import Observability, QueryRecorder

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session


class Watchers:
    """The opt-in observers of one database."""

    __slots__ = ("engine_hooks", "gate_observers", "hold_threshold", "name", "recorder")

    def __init__(self, observability: Observability, name: str) -> None:
        self.name = name
        self.recorder: QueryRecorder | None = (
            QueryRecorder(observability, name) if observability.watches_queries else None
        )
        """The statement listeners (None: query recording and the slow-query log are off)."""
        self.hold_threshold = observability.hold_warning_threshold
        self.engine_hooks: list[Callable[[Engine], object]] = []
        self.gate_observers: list[Callable[[float, bool], object]] = []
        """Called with (seconds waited, got a permit) after each wait at the capacity gate."""

    def engine_options(self, options: Mapping[str, Any], *, is_async: bool) -> dict[str, Any]:
        """The pool's ``logging_name`` (OpenTelemetry's pool name) unless the user set one."""
        name = f"{self.name}-async" if is_async else self.name
        return {"pool_logging_name": name, **options}

    def engine_created(self, engine: Engine) -> None:
        """Install what watches a new engine (the sync one, or an async engine's sync one)."""
        if self.recorder is not None:
            _roundtrips.install(engine, recorder=self.recorder)
        for hook in self.engine_hooks:
            hook(engine)

    def session_created(self, session: Session) -> None:
        """Watch a new session's hold time (a sync session, or an AsyncSession's sync one).

        Called only when ``hold_threshold`` is set."""
        assert self.hold_threshold is not None
        _holds.watch(session, self.hold_threshold, self.name)
