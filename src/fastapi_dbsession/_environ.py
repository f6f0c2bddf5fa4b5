"""Read the manager's constructor arguments from environment variables (``from_env``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigurationError

# from_env: (variable suffix, engine option, parser)
_ENV_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("POOL_SIZE", "pool_size", "int"),
    ("MAX_OVERFLOW", "max_overflow", "int"),
    ("POOL_TIMEOUT", "pool_timeout", "float"),
    ("POOL_RECYCLE", "pool_recycle", "int"),
    ("POOL_PRE_PING", "pool_pre_ping", "flag"),
    ("ECHO", "echo", "flag"),
)


def env_arguments(
    environ: Mapping[str, str], prefix: str, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Read the constructor's arguments from environment variables named ``{prefix}...``.

    Raises:
        ConfigurationError: No URL variable is set, or a number or flag does not parse.
    """
    options: dict[str, Any] = {}
    for suffix, option, kind in _ENV_OPTIONS:
        raw = environ.get(prefix + suffix)
        if raw is None or raw == "":
            continue
        try:
            options[option] = parse_bool(raw) if kind == "flag" else _NUMBERS[kind](raw)
        except ValueError:
            described = "flag (true/false)" if kind == "flag" else kind
            raise ConfigurationError(
                f"Environment variable {prefix}{suffix}={raw!r} is not a valid {described}."
            ) from None
    arguments: dict[str, Any] = {
        "url": environ.get(prefix + "URL") or None,
        "async_url": environ.get(prefix + "ASYNC_URL") or None,
    }
    if options:
        arguments["engine_options"] = options
    if environ.get(prefix + "PGBOUNCER"):
        try:
            arguments["pgbouncer"] = parse_bool(environ[prefix + "PGBOUNCER"])
        except ValueError:
            raise ConfigurationError(
                f"Environment variable {prefix}PGBOUNCER={environ[prefix + 'PGBOUNCER']!r} "
                "is not a valid flag (true/false)."
            ) from None
    if environ.get(prefix + "COMMIT_POLICY"):
        arguments["commit_policy"] = environ[prefix + "COMMIT_POLICY"]
    arguments.update(overrides)
    if arguments["url"] is None and arguments["async_url"] is None:
        raise ConfigurationError(
            f"DatabaseSessionManager.from_env() found neither {prefix}URL nor "
            f"{prefix}ASYNC_URL in the environment. Set one, e.g. "
            f"{prefix}URL=postgresql+psycopg://app@localhost/app."
        )
    return arguments


_NUMBERS: dict[str, Callable[[str], int | float]] = {"int": int, "float": float}


def parse_bool(raw: str) -> bool:
    """Read a flag the way environment variables spell them (1/0, true/false, yes/no, on/off)."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
