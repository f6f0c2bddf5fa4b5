"""Property tests over URLs and options: only our errors escape, and never the password.

Hypothesis generates database URLs of every shape (well-formed, missing "//", no scheme,
``?password=``, unencoded special characters, several hosts, no host, mangled), engine
options, session options and unit-of-work options. For each: build a manager, take its
``repr()``, build the engine and open a unit of work (on a port where nothing listens, or a
SQLite file). Whatever happens, an exception that escapes must be a ``DBSessionError``, and
no formatted traceback (causes included), ``repr()`` or log record may contain the password.

Profiles (registered in tests/conftest.py): "short" by default, in every run and CI's, 40
examples a property; ``HYPOTHESIS_PROFILE=long pytest tests/test_properties.py`` runs 1,000
examples a property (docs/test-suite.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

from fastapi_dbsession import DatabaseSessionManager, DBSessionError, DBSessionWarning, Propagation

# up to a second an example (the long profile: 1,000 examples, well past the 120 s default)
pytestmark = pytest.mark.timeout(max(120, settings.default.max_examples))

# A password is three or so tokens joined by characters that need encoding. Tokens start
# with "ZQ9", which no message of ours or of a driver contains, so finding a token in a text
# means the password leaked (a whole token, or a part of a password split at "@" or ":").
TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=3, max_size=8
).map(lambda tail: "ZQ9" + tail)
SPECIALS = st.sampled_from([*"@:/?#%& +=;!'\"[]{}|\\^`~,$", "", "", ""])
SCHEMES = st.sampled_from(
    [
        "postgresql+psycopg",
        "postgresql+asyncpg",
        "postgresql",
        "mysql+pymysql",
        "mariadb+aiomysql",
        "sqlite",
        "http",
        "nosuchdb",
        "postgresql+nosuch",
    ]
)
HOSTS = st.sampled_from(["127.0.0.1", "127.0.0.1:1", "[::1]:1", "127.0.0.1:1,127.0.0.2:1", ""])
SHAPES = [
    "{scheme}://u:{pw}@{host}/db",
    "{scheme}//u:{pw}@{host}/db",
    "{scheme}:u:{pw}@{host}/db",
    "u:{pw}@{host}/db",
    "{scheme}://u@{host}/db?password={pw}",
    "{scheme}://u@{host}/db?sslmode=disable&password={encoded}",
    "{scheme}://u@{host}/db?sslpassword={encoded}",
    "{scheme}://u:{pw}@/db?host=127.0.0.1&port=1",
    "{scheme}://u:{encoded}",
    "{scheme}://u:{pw}@",
    "{scheme}:///u:{pw}@{host}",
    "{scheme}://:{pw}@{host}/db",
]


@st.composite
def passwords(draw: st.DrawFn) -> tuple[str, list[str]]:
    tokens = draw(st.lists(TOKEN, min_size=1, max_size=3))
    glue = [draw(SPECIALS) for _ in tokens[1:]]
    password = tokens[0] + "".join(g + t for g, t in zip(glue, tokens[1:], strict=True))
    return password, tokens


# sslpassword stays in the URL's query, where SQLAlchemy's own str(url) and repr(engine) show
# it (documented in docs/configuration.md): for that shape only our texts are searched.
SQLALCHEMY_SHOWS = "{scheme}://u@{host}/db?sslpassword={encoded}"


@st.composite
def secret_urls(draw: st.DrawFn) -> tuple[str, list[str], bool]:
    """A URL carrying a password in a password's place, possibly mangled elsewhere.

    Returns the URL, the password's tokens, and whether SQLAlchemy's reprs must hide it too.
    """
    password, tokens = draw(passwords())
    encode = draw(st.booleans())
    shape = draw(st.sampled_from(SHAPES))
    url = shape.format(
        scheme=draw(SCHEMES),
        host=draw(HOSTS),
        pw=quote_plus(password) if encode else password,
        encoded=quote_plus(password),
    )
    start = url.find(tokens[0])
    # mangle one character away from the password and the 10 before it (dropping the ":" of
    # "u:P@h" makes P the user name, a typo in "password=" an ordinary key: no parser can tell)
    end = start + max(len(password), len(quote_plus(password)))  # as the URL spells it
    outside = [i for i in range(len(url)) if not start - 10 <= i <= end + 3]
    if outside and draw(st.booleans()):
        position = draw(st.sampled_from(outside))
        replacement = draw(st.sampled_from(["", url[position] * 2, "/", ":", "+", "?"]))
        url = url[:position] + replacement + url[position + 1 :]
    return url, tokens, shape != SQLALCHEMY_SHOWS


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("fastapi_dbsession")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def in_directory(path: Path) -> Iterator[None]:
    """SQLite URLs such as ``sqlite:///u:P@h`` make a file: keep it in tmp_path."""
    saved = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


def exercise(
    build: Callable[[], DatabaseSessionManager], shown: list[str], theirs: list[str] | None = None
) -> None:
    """Build, repr, create the engines and open a unit of work on each side.

    Everything we show (reprs, formatted tracebacks) is appended to ``shown``, SQLAlchemy's
    ``str(url)`` and ``repr(engine)`` to ``theirs`` (default: ``shown``); an exception that is
    not ours fails the test.
    """
    theirs = shown if theirs is None else theirs

    def failed(exc: BaseException) -> None:
        shown.append("".join(traceback.format_exception(exc)) + repr(exc))
        if not isinstance(exc, DBSessionError):
            raise AssertionError(f"{type(exc).__name__} escaped: {exc!r}") from exc

    try:
        db = build()
    except Exception as exc:
        failed(exc)
        return
    shown.append(repr(db))
    theirs.extend(str(url) for url in (db.url, db.async_url) if url is not None)
    try:
        if db.url is not None:
            theirs.append(repr(db.engine))
            with db.transaction() as session:
                session.execute(text("SELECT 1"))
    except Exception as exc:
        failed(exc)
    finally:
        db.dispose()

    async def use_async() -> None:
        try:
            theirs.append(repr(db.async_engine))
            async with db.async_transaction() as session:
                await session.execute(text("SELECT 1"))
        finally:
            await db.async_dispose()

    if db.async_url is not None:
        try:
            asyncio.run(use_async())
        except Exception as exc:
            failed(exc)


# aiomysql's Connection.__del__ fails on a connection whose __init__ raised (a bad port):
# its unraisable AttributeError is aiomysql's, not a leak or an error of ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@given(case=secret_urls(), argument=st.sampled_from(["url", "async_url"]))
def test_no_url_shape_shows_its_password_or_raises_a_foreign_error(
    case: tuple[str, list[str], bool], argument: str, records: Records, tmp_path: Path
) -> None:
    url, tokens, sqlalchemy_masks = case
    records.lines.clear()
    shown: list[str] = []
    theirs: list[str] = []
    with in_directory(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a SQLite URL with odd query parameters may warn
        exercise(lambda: DatabaseSessionManager(**{argument: url}), shown, theirs)
    for place in [*shown, *records.lines, *(theirs if sqlalchemy_masks else ())]:
        for token in tokens:
            assert token not in place, f"{token!r} of the password shown for {url!r}:\n{place}"


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=10),
    st.floats(allow_nan=False, min_value=-10, max_value=10),
    st.sampled_from(["", "5", "QueuePool", "debug", "BOGUS", "serializable", "read_committed"]),
    st.sampled_from([NullPool, QueuePool, StaticPool, dict, int, object()]),
)
ENGINE_KEYS = st.sampled_from(
    [
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "pool_use_lifo",
        "poolclass",
        "echo",
        "echo_pool",
        "isolation_level",
        "connect_args",
        "hide_parameters",
        "bogus_option",
    ]
)
SESSION_KEYS = st.sampled_from(
    ["autoflush", "expire_on_commit", "autobegin", "twophase", "info", "bind", "class_", "bogus"]
)


@given(
    engine_options=st.dictionaries(ENGINE_KEYS, VALUES, max_size=4),
    session_options=st.dictionaries(SESSION_KEYS, VALUES, max_size=3),
    async_session_options=st.dictionaries(SESSION_KEYS, VALUES, max_size=2),
)
def test_any_options_give_a_working_manager_or_our_error(
    engine_options: dict[str, Any],
    session_options: dict[str, Any],
    async_session_options: dict[str, Any],
    tmp_path: Path,
) -> None:
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exercise(
            lambda: DatabaseSessionManager(
                f"sqlite:///{tmp_path / 'options.db'}",
                engine_options=engine_options,
                session_options=session_options,
                async_session_options=async_session_options,
            ),
            shown,
        )


UNIT_VALUES = st.one_of(VALUES, st.sampled_from(list(Propagation)), st.just((ValueError,)))


@given(
    options=st.dictionaries(
        st.sampled_from(
            ["propagation", "isolation_level", "read_only", "timeout", "durable", "rollback_on"]
        ),
        UNIT_VALUES,
        max_size=4,
    )
)
def test_any_unit_options_run_or_raise_our_error(options: dict[str, Any], tmp_path: Path) -> None:
    db = DatabaseSessionManager(f"sqlite:///{tmp_path / 'units.db'}")

    async def use_async() -> None:
        try:
            async with db.async_transaction(**options) as session:
                await session.execute(text("SELECT 1"))
        finally:
            await db.async_dispose()

    try:
        for run in (
            lambda: _run_sync(db, options),
            lambda: asyncio.run(use_async()),
        ):
            # our warnings are ours too (timeout= on SQLite says it is not enforced there)
            with suppress(DBSessionError), warnings.catch_warnings():
                warnings.simplefilter("ignore", DBSessionWarning)
                run()
    finally:
        db.dispose()


def _run_sync(db: DatabaseSessionManager, options: dict[str, Any]) -> None:
    with db.transaction(**options) as session:
        session.execute(text("SELECT 1"))
