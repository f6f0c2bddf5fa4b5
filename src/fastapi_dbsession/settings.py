"""Read the manager's settings from the environment, ``.env`` and secret files, typed.

Needs the ``[settings]`` extra (pydantic-settings); nothing else in the package imports this
module, so the library works without it (``from_env()`` included).
"""

from __future__ import annotations

from typing import Any, Literal

try:
    from pydantic import Field, SecretStr, ValidationError
    from pydantic_settings import BaseSettings, SettingsConfigDict
except ImportError:  # pragma: no cover - exercised in a subprocess without the extra
    from ._urls import install_hint
    from .errors import MissingDriverError

    raise MissingDriverError(
        "fastapi_dbsession.DatabaseSettings needs pydantic-settings, which is not installed. "
        f"Install it with {install_hint('pydantic_settings')}, or use "
        "DatabaseSessionManager.from_env(), which needs nothing more."
    ) from None

from sqlalchemy.engine import make_url

__all__ = ["DatabaseSettings"]

_POOL_FIELDS = ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping")


class DatabaseSettings(BaseSettings):
    """Typed settings of one database, read from ``DATABASE_*`` variables.

    Sources, highest priority first: arguments, environment variables (``DATABASE_URL``,
    ``DATABASE_POOL_SIZE``, ...), a ``.env`` file in the working directory, secret files
    (``DatabaseSettings(_secrets_dir="/run/secrets")``: a file named ``database_password``
    holds the password), the defaults. Another prefix, for a second database: subclass with
    ``model_config = SettingsConfigDict(env_prefix="ORDERS_DB_")``.

    A value that does not parse raises pydantic's ``ValidationError`` naming the variable
    (``DATABASE_POOL_SIZE``); the offending value is never shown, and the password is a
    ``SecretStr`` (``repr()`` shows ``**********``). The URLs are kept out of ``repr()`` too.

    Example:
        >>> settings = DatabaseSettings()          # DATABASE_URL=postgresql+psycopg://app@db/app
        >>> db = DatabaseSessionManager.from_settings(settings)
    """

    model_config = SettingsConfigDict(
        env_prefix="DATABASE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
        env_parse_none_str="none",  # DATABASE_POOL_SATURATION_WARNING=none turns it off
    )

    url: str | None = Field(default=None, repr=False)
    """The sync URL (``DATABASE_URL``); its password may instead come from ``password``."""
    async_url: str | None = Field(default=None, repr=False)
    """The asyncio URL (``DATABASE_ASYNC_URL``); derived from ``url`` when omitted."""
    replica_urls: list[str] = Field(default_factory=list, repr=False)
    """Read replicas (``DATABASE_REPLICA_URLS``, a JSON list: ``["postgresql://...", ...]``)."""
    password: SecretStr | None = None
    """The password (``DATABASE_PASSWORD`` or the secret file ``database_password``), set into
    every URL (replicas included); it wins over a password written in them."""
    name: str | None = None
    """The database's name in logs and metric labels (``DATABASE_NAME``)."""
    pool_size: int | None = Field(default=None, ge=0)
    max_overflow: int | None = Field(default=None, ge=-1)
    pool_timeout: float | None = Field(default=None, gt=0)
    """Seconds a request waits for a connection before it is answered 503."""
    pool_recycle: int | None = None
    pool_pre_ping: bool | None = None
    echo: bool = False
    commit_policy: Literal["commit", "manual", "read_only"] = "commit"
    startup_retries: int = Field(default=3, ge=0)
    startup_timeout: float = Field(default=5.0, gt=0)
    pool_saturation_warning: float | None = Field(default=None, gt=0, le=1)
    pgbouncer: bool = False
    """Behind PgBouncer in transaction pooling mode (``DATABASE_PGBOUNCER``)."""
    twophase: bool = False
    """Commit a request that wrote to several databases by two-phase commit
    (``DATABASE_TWOPHASE``; PostgreSQL with ``max_prepared_transactions > 0``)."""
    binds: dict[str, str] | None = Field(default=None, repr=False)
    """Bind keys to URLs (``DATABASE_BINDS``, a JSON object: ``{"billing": "postgresql://..."}``);
    ``password`` is not set into them: each bind URL carries its own credentials."""
    record_queries: bool = False
    """Count and time each request's statements (``DATABASE_RECORD_QUERIES``)."""
    slow_query_threshold: float | None = Field(default=None, gt=0)
    """Seconds from which a statement is logged as slow (``DATABASE_SLOW_QUERY_THRESHOLD``)."""
    log_query_parameters: bool = False
    """Show bound parameters in the slow-query log (``DATABASE_LOG_QUERY_PARAMETERS``)."""
    hold_warning_threshold: float | None = Field(default=None, gt=0)
    """Seconds a request or unit may hold a connection before a warning
    (``DATABASE_HOLD_WARNING_THRESHOLD``)."""
    command_timeout: float | None = Field(default=60.0, gt=0)
    """Client-side deadline of each round trip, in seconds (``DATABASE_COMMAND_TIMEOUT``;
    ``none``: no limit)."""
    connect_timeout: float | None = Field(default=10.0, gt=0)
    """Client-side deadline of opening a connection (``DATABASE_CONNECT_TIMEOUT``; ``none``:
    the driver's)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _naming_variables(exc, type(self)) from None

    def manager_arguments(self) -> dict[str, Any]:
        """The ``DatabaseSessionManager`` keyword arguments these settings stand for."""
        engine_options: dict[str, Any] = {
            name: getattr(self, name) for name in _POOL_FIELDS if getattr(self, name) is not None
        }
        if self.echo:
            engine_options["echo"] = True
        arguments: dict[str, Any] = {
            "url": self._with_password(self.url),
            "async_url": self._with_password(self.async_url),
            "commit_policy": self.commit_policy,
            "startup_retries": self.startup_retries,
            "startup_timeout": self.startup_timeout,
            "pool_saturation_warning": self.pool_saturation_warning,
            "pgbouncer": self.pgbouncer,
            "twophase": self.twophase,
            "binds": self.binds,
            "replica_urls": [self._with_password(url) for url in self.replica_urls],
            "name": self.name,
            "record_queries": self.record_queries,
            "slow_query_threshold": self.slow_query_threshold,
            "log_query_parameters": self.log_query_parameters,
            "hold_warning_threshold": self.hold_warning_threshold,
            "command_timeout": self.command_timeout,
            "connect_timeout": self.connect_timeout,
        }
        if engine_options:
            arguments["engine_options"] = engine_options
        return arguments

    def _with_password(self, url: str | None) -> Any:
        if url is None or self.password is None:
            return url
        try:
            parsed = make_url(url)
        except Exception:  # the manager explains a malformed URL, with secrets masked
            return url
        return parsed.set(password=self.password.get_secret_value())


def _naming_variables(exc: ValidationError, settings_class: type[BaseSettings]) -> ValidationError:
    """``exc`` with each field replaced by its variable name: ``DATABASE_POOL_SIZE``."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    errors = []
    for error in exc.errors(include_url=False):
        location = error["loc"]
        if location and isinstance(location[0], str):
            location = ((prefix + location[0]).upper(), *location[1:])
        errors.append(
            {"type": error["type"], "loc": location, "input": error.get("input"), **_ctx(error)}
        )
    try:
        return ValidationError.from_exception_data(
            settings_class.__name__,
            errors,  # type: ignore[arg-type]
            hide_input=True,
        )
    except Exception:  # an error type pydantic cannot rebuild: keep the original
        return exc


def _ctx(error: Any) -> dict[str, Any]:
    context = error.get("ctx")
    return {} if context is None else {"ctx": context}
