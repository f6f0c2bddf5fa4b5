"""The manager's observability members: its name in logs and metrics, engine hooks, metrics."""

from __future__ import annotations

from ._base import Facet


class ObservabilityFacet(Facet):
    """``name``; what watches the engines (query recording is set up by the constructor)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """This database's name in log lines, ``Server-Timing`` and metric labels."""
        return self._database.config.name
