"""Read the manager's constructor arguments from environment variables (``from_env``)."""

from __future__ import annotations

import json
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
    for suffix, argument in (("PGBOUNCER", "pgbouncer"), ("TWOPHASE", "twophase")):
        if environ.get(prefix + suffix):
            try:
                arguments[argument] = parse_bool(environ[prefix + suffix])
            except ValueError:
                raise ConfigurationError(
                    f"Environment variable {prefix}{suffix}={environ[prefix + suffix]!r} "
                    "is not a valid flag (true/false)."
                ) from None
    if environ.get(prefix + "BINDS"):
        arguments["binds"] = parse_binds(environ[prefix + "BINDS"], variable=prefix + "BINDS")
    if environ.get(prefix + "REPLICA_URLS"):
        variable = prefix + "REPLICA_URLS"
        arguments["replica_urls"] = parse_replica_urls(environ[variable], variable=variable)
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


def parse_binds(raw: str, *, variable: str) -> dict[str, str]:
    """Read ``binds`` from a JSON object of bind keys to URLs; the value is never shown (its
    URLs may hold passwords).

    Raises:
        ConfigurationError: Not a JSON object whose values are strings.
    """
    example = f'{variable}=\'{{"billing": "postgresql+psycopg://app@billing-db/billing"}}\''
    binds = _parse_json(raw, variable, example)
    if not isinstance(binds, dict) or not all(isinstance(v, str) for v in binds.values()):
        raise ConfigurationError(
            f"Environment variable {variable} must be a JSON object of bind keys to URL "
            f"strings, not {_json_kind(binds)} (the value is not shown, it may hold "
            f"passwords): {example}."
        )
    return binds


def parse_replica_urls(raw: str, *, variable: str) -> list[str]:
    """Read ``replica_urls`` from a JSON array of URLs; the value is never shown (its URLs may
    hold passwords).

    Raises:
        ConfigurationError: Not a JSON array of strings.
    """
    example = f"{variable}='[\"postgresql+psycopg://app@replica-1/app\"]'"
    urls = _parse_json(raw, variable, example)
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        if isinstance(urls, list):
            kind = "an array with an item that is not a string"
        else:
            kind = "an object" if isinstance(urls, dict) else _json_kind(urls)
        raise ConfigurationError(
            f"Environment variable {variable} must be a JSON array of URL strings, not {kind} "
            f"(the value is not shown, it may hold passwords): {example}."
        )
    return urls


def _parse_json(raw: str, variable: str, example: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"Environment variable {variable} is not valid JSON ({exc.msg} at character "
            f"{exc.pos}; the value is not shown, it may hold passwords). Give it as JSON: "
            f"{example}."
        ) from None


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object with a value that is not a string"
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def parse_bool(raw: str) -> bool:
    """Read a flag the way environment variables spell them (1/0, true/false, yes/no, on/off)."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
