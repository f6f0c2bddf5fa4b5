"""What every facet may rely on: the manager's ``Database``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi_dbsession._database import Database


class Facet:
    """Base of the manager's facets: declares the one attribute they read."""

    __slots__ = ()
    _database: Database
