"""Check option values (isolation levels, flags, pool numbers, session options) early."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from .errors import ConfigurationError

# SQLAlchemy's spellings, which every dialect we support maps (SQLite: a subset, refused by
# SQLAlchemy at the first connect).
ISOLATION_LEVELS = ("SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED")
_ENGINE_ONLY_LEVELS = ("AUTOCOMMIT",)

# engine option -> smallest valid value, and what the boundary means
POOL_MINIMUMS: dict[str, tuple[int, str]] = {
    "pool_size": (0, "0 means no limit"),
    "max_overflow": (-1, "-1 means no limit on overflow"),
    "pool_timeout": (0, "seconds to wait for a free connection"),
    "pool_recycle": (-1, "-1 means never recycle"),
}


def isolation_level(value: object, *, argument: str, engine: bool = False) -> str | None:
    """Return ``value`` spelled as SQLAlchemy expects (``"read_committed"`` works too).

    Raises:
        ConfigurationError: Not a string, or not an isolation level.
    """
    if value is None:
        return None
    known = ISOLATION_LEVELS + (_ENGINE_ONLY_LEVELS if engine else ())
    spelled = value.strip().upper().replace("_", " ") if isinstance(value, str) else None
    if spelled not in known:
        raise ConfigurationError(
            f"{argument}={value!r} is not an isolation level. Use one of "
            f"{', '.join(map(repr, known))} (SQLite knows SERIALIZABLE and READ UNCOMMITTED)."
        )
    return spelled


def flag(value: object, *, argument: str) -> bool:
    """Return ``value`` if it is a bool.

    Raises:
        ConfigurationError: Anything else (a string such as "no" would be true).
    """
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{argument}={value!r} must be True or False, not {type(value).__name__}. Pass a "
            "bool: read from a string, 'no' or 'false' would count as true."
        )
    return value


def backend_isolation_level(
    value: object, backend: str, *, argument: str, engine: bool = False
) -> None:
    """Refuse an isolation level that is spelled right but that ``backend`` does not have.

    Raises:
        ConfigurationError: E.g. READ COMMITTED on SQLite (SQLAlchemy's ``ArgumentError`` at
            the first connection otherwise).
    """
    level = isolation_level(value, argument=argument, engine=engine)
    levels = _BACKEND_LEVELS.get(backend)
    if level is None or levels is None:
        return
    known = levels + (_ENGINE_ONLY_LEVELS if engine else ())
    if level not in known:
        raise ConfigurationError(
            f"{argument}={value!r}: {backend} has no {level} isolation level. Use one of "
            f"{', '.join(map(repr, known))}, or leave it out for the database's default."
        )


# backends that know only some of ISOLATION_LEVELS (PostgreSQL and MariaDB/MySQL: all four)
_BACKEND_LEVELS: dict[str, tuple[str, ...]] = {"sqlite": ("SERIALIZABLE", "READ UNCOMMITTED")}


def echo(value: object, *, argument: str) -> None:
    """Refuse an ``echo`` / ``echo_pool`` value SQLAlchemy has no logging level for.

    Raises:
        ConfigurationError: Not True, False, None or "debug" (``echo=""`` used to raise a
            KeyError inside SQLAlchemy's logging when the engine was created).
    """
    if not (value is None or isinstance(value, bool) or value == "debug"):
        raise ConfigurationError(
            f'{argument}={value!r} must be True (log statements), "debug" (statements and '
            "rows), False or None (do not log)."
        )


def timeouts(
    *, connect_timeout: object, command_timeout: object
) -> tuple[float | None, float | None]:
    """Return ``(connect_timeout, command_timeout)``: each a positive number of seconds or None.

    Raises:
        ConfigurationError: Zero, a negative number, a bool or a string.
    """
    checked: list[float | None] = []
    for argument, value in (
        ("connect_timeout", connect_timeout),
        ("command_timeout", command_timeout),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
        ):
            raise ConfigurationError(
                f"{argument}={value!r} must be a positive number of seconds, or None to wait "
                f"without a client-side limit, e.g. {argument}=30."
            )
        checked.append(None if value is None else float(value))
    return checked[0], checked[1]


def pool_number(name: str, value: float, *, argument: str) -> None:
    """Refuse a pool size, overflow, timeout or recycle below its minimum.

    Raises:
        ConfigurationError: ``value`` is below the minimum (``max_overflow=-5`` used to
            recurse inside the pool at the first checkout).
    """
    minimum, meaning = POOL_MINIMUMS[name]
    if value < minimum:
        raise ConfigurationError(
            f"{argument}[{name!r}] must be >= {minimum} ({meaning}), not {value!r}."
        )


# QueuePool-style options, and the name of the pool class argument each one becomes
_POOL_ARGUMENTS = {
    "pool_size": "pool_size",
    "max_overflow": "max_overflow",
    "pool_timeout": "timeout",
    "pool_use_lifo": "use_lifo",
}


def engine_values(options: Mapping[str, Any], *, argument: str) -> None:
    """Check the values of engine options whose mistakes SQLAlchemy reports late or never.

    Raises:
        ConfigurationError: A pool number below its minimum, a ``poolclass`` that is not a
            pool class (or takes no pool size/overflow/timeout given with it), an isolation
            level that does not exist.
    """
    for name in POOL_MINIMUMS:
        value = options.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            pool_number(name, value, argument=argument)
    for name in ("echo", "echo_pool"):
        if name in options:
            echo(options[name], argument=f"{argument}[{name!r}]")
    if "isolation_level" in options:
        isolation_level(
            options["isolation_level"], argument=f"{argument}['isolation_level']", engine=True
        )
    poolclass = options.get("poolclass")
    if poolclass is None:
        return
    if not (isinstance(poolclass, type) and issubclass(poolclass, Pool)):
        raise ConfigurationError(
            f"{argument}['poolclass'] must be a pool class such as sqlalchemy.pool.NullPool "
            f"(the class itself, imported), not {poolclass!r}."
        )
    accepted = _keyword_names(poolclass)
    if accepted is None:
        return
    for name, parameter in _POOL_ARGUMENTS.items():
        if name in options and parameter not in accepted:
            raise ConfigurationError(
                f"{argument}: poolclass={poolclass.__name__} takes no {name!r} (it keeps no "
                f"pool of that kind). Drop {name!r}, or use poolclass=QueuePool."
            )


def session_keys(
    options: Mapping[str, Any],
    session_class: type,
    *,
    argument: str,
    extra: frozenset[str] = frozenset(),
) -> None:
    """Check session options against the sessionmaker's and the session classes' arguments.

    Raises:
        ConfigurationError: An option neither ``sessionmaker`` nor the session class takes,
            ``bind`` / ``class_`` (the manager sets them), a flag that is not a bool.
    """
    for name in ("bind", "class_"):
        if name in options:
            raise ConfigurationError(
                f"{argument}[{name!r}]: the manager sets the session's {name} itself. Use "
                "engine_options for the engine, and session_class= / async_session_class= "
                "for the class."
            )
    for name in _SESSION_FLAGS & set(options):
        flag(options[name], argument=f"{argument}[{name!r}]")
    if options.get("autobegin") is False:
        raise ConfigurationError(
            f"{argument}['autobegin']=False: the manager's sessions begin their transaction "
            "at the first statement, and every request and unit of work relies on it (each "
            "would fail with SQLAlchemy's 'Autobegin is disabled'). Leave it out."
        )
    if "info" in options and not isinstance(options["info"], Mapping):
        raise ConfigurationError(
            f"{argument}['info'] must be a dict (it becomes session.info), not "
            f"{type(options['info']).__name__}, e.g. {argument}={{'info': {{'app': 'shop'}}}}."
        )
    accepted = _keyword_names(session_class)
    if accepted is None:
        return  # takes **kwargs: anything may be right
    accepted |= extra | {"autoflush", "expire_on_commit", "info"}  # sessionmaker's own
    for name in options:
        if name not in accepted:
            known = ", ".join(sorted(accepted - {"bind", "binds"}))
            raise ConfigurationError(
                f"{argument}[{name!r}] is not an argument of sessionmaker or "
                f"{session_class.__name__}. Known: {known}."
            )


_SESSION_FLAGS = frozenset({"autoflush", "expire_on_commit", "autobegin", "twophase"})


def _keyword_names(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes, or None when it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return {
        parameter.name
        for parameter in parameters
        if parameter.kind is not inspect.Parameter.POSITIONAL_ONLY
    }


def async_session_class(cls: object) -> type[Session]:
    """Refuse an ``async_session_class`` that is not an ``AsyncSession``; its sync class.

    Judged by the MRO, so that sqlalchemy.ext.asyncio (and greenlet) is not imported here.

    Raises:
        ConfigurationError: ``cls`` is not an AsyncSession class.
    """
    if cls is None:
        return Session
    if not (
        isinstance(cls, type)
        and any(
            base.__name__ == "AsyncSession" and base.__module__.startswith("sqlalchemy.ext.asyncio")
            for base in cls.__mro__
        )
    ):
        raise ConfigurationError(
            "async_session_class must be a subclass of sqlalchemy.ext.asyncio.AsyncSession "
            f"(e.g. sqlmodel.ext.asyncio.session.AsyncSession), not {cls!r}. A sync Session "
            "class goes to session_class=."
        )
    sync_class: type[Session] = getattr(cls, "sync_session_class", Session)
    return sync_class


def session_twophase(options: Mapping[str, Any], backend: str | None, *, argument: str) -> None:
    """Refuse ``twophase=True`` in session options on a backend without two-phase commit.

    Raises:
        ConfigurationError: SQLite (SQLAlchemy's ``NotImplementedError`` at the first commit
            otherwise) or MariaDB/MySQL (XA: a deadlocked branch cannot be rolled back by
            SQLAlchemy's dialect; see ``check_twophase``).
    """
    if options.get("twophase") is True and backend not in ("postgresql", None):
        raise ConfigurationError(
            f"{argument}['twophase']=True needs PostgreSQL (PREPARE TRANSACTION); {backend} "
            "has no two-phase commit here. Leave it out."
        )


def session_options(
    shared: Mapping[str, Any],
    async_only: Mapping[str, Any],
    session_class: type[Session],
    async_class: object,
) -> None:
    """Check the session options against what each side's sessionmaker and class take.

    Raises:
        ConfigurationError: See :func:`session_keys` and :func:`async_session_class`.
    """
    async_sync_class = async_session_class(async_class)
    session_keys(shared, session_class, argument="session_options")
    session_keys(shared, async_sync_class, argument="session_options")
    session_keys(
        async_only,
        async_sync_class,
        argument="async_session_options",
        extra=frozenset({"sync_session_class"}),
    )
