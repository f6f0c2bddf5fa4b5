"""The manager's construction helpers, engines and commit-policy dependencies."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Container
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy.engine import URL, Engine
from starlette.requests import HTTPConnection

from fastapi_dbsession import _environ, dependencies
from fastapi_dbsession.propagation import CommitPolicy, check_policy, check_statuses

from ._base import Facet

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from fastapi_dbsession.settings import DatabaseSettings


class EnginesFacet(Facet):
    """``from_env`` / ``from_settings``, the URLs and engines, ``dispose``, ``commit_policy``."""

    __slots__ = ()
    _policy_dependencies: dict[str, Callable[[HTTPConnection], Awaitable[None]]]

    @classmethod
    def from_env(cls, prefix: str = "DATABASE_", **overrides: Any) -> Self:
        """Build a manager from environment variables.

        Reads ``{prefix}`` + ``URL``, ``ASYNC_URL``, ``POOL_SIZE``, ``MAX_OVERFLOW``,
        ``POOL_TIMEOUT``, ``POOL_RECYCLE``, ``POOL_PRE_PING``, ``ECHO``, ``COMMIT_POLICY``,
        ``PGBOUNCER``, ``TWOPHASE`` (a flag) and ``BINDS`` (a JSON object of bind keys to
        URLs: ``{"billing": "postgresql+psycopg://app@billing-db/billing"}``).

        Args:
            prefix: Prefix of the variable names.
            **overrides: Keyword arguments for the constructor; they win over the environment.

        Raises:
            ConfigurationError: No URL variable is set, or a number, flag or ``BINDS`` does
                not parse.

        Example:
            >>> os.environ["DATABASE_URL"] = "sqlite:///./app.db"
            >>> db = DatabaseSessionManager.from_env()
        """
        return cls(**_environ.env_arguments(os.environ, prefix, overrides))

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, **overrides: Any) -> Self:
        """Build a manager from typed settings (extra ``[settings]``): see ``DatabaseSettings``.

        Example:
            >>> db = DatabaseSessionManager.from_settings(DatabaseSettings())
        """
        return cls(**{**settings.manager_arguments(), **overrides})

    @property
    def url(self) -> URL | None:
        """The sync URL (given or derived). Render it with ``hide_password=True``."""
        return self._database.config.url

    @property
    def async_url(self) -> URL | None:
        """The asyncio URL (given or derived)."""
        return self._database.config.async_url

    @property
    def default_commit_policy(self) -> CommitPolicy:
        """The commit policy of routes that do not choose one."""
        return self._database.config.commit_policy

    @property
    def engine(self) -> Engine:
        """The sync engine, created on first use (``MissingDriverError`` names the extra)."""
        return self._database.engine

    @property
    def async_engine(self) -> AsyncEngine:
        """The asyncio engine, created on first use (``MissingDriverError`` names the extra)."""
        return self._database.async_engine

    def dispose(self) -> None:
        """Close every pooled connection of the sync engine (it is recreated on next use)."""
        self._database.dispose()

    async def async_dispose(self) -> None:
        """Close every pooled connection of the async engine (it is recreated on next use)."""
        await self._database.async_dispose()

    def commit_policy(
        self, policy: CommitPolicy, *, statuses: Container[int] | None = None
    ) -> Callable[[HTTPConnection], Awaitable[None]]:
        """Return a route dependency that sets the commit rule of that route's session.

        Args:
            policy: ``"commit"``, ``"manual"`` or ``"read_only"``.
            statuses: Under ``"commit"``, the statuses that commit on this route (default:
                the manager's ``commit_statuses``), e.g. ``range(200, 400)``.

        Raises:
            ConfigurationError: ``policy`` is not a commit policy, or ``statuses`` no
                collection of status codes.

        Example:
            >>> @app.post("/import", dependencies=[Depends(db.commit_policy("manual"))])
            ... def run_import(session: Session = Depends(db.session)) -> None: ...
        """
        checked = check_policy(policy, argument="commit_policy")
        if statuses is not None:
            checked_statuses = check_statuses(statuses, argument="statuses")
            return dependencies.commit_policy_dependency(self._database, checked, checked_statuses)
        if checked not in self._policy_dependencies:
            self._policy_dependencies[checked] = dependencies.commit_policy_dependency(
                self._database, checked
            )
        return self._policy_dependencies[checked]
