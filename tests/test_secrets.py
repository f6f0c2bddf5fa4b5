"""No password in what the library raises, logs or ``repr()``s, whatever the URL's shape.

The URLs carry :data:`SECRET`; every test looks for it (and its percent-encoded spelling) in
the formatted traceback of what was raised (chained causes included), in ``repr(db)``,
``str(db.url)``, the engine's ``repr()`` and every log record of ``fastapi_dbsession``.
The property tests over random URLs and options are in ``tests/test_properties.py``.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from pathlib import Path
from urllib.parse import quote_plus, unquote

import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from sqlalchemy import URL, make_url, text
from sqlalchemy.orm import Session

from fastapi_dbsession import (
    ConfigurationError,
    DatabaseSessionManager,
    DatabaseUnavailableError,
    _secrets,
    _urls,
)

SECRET = "Zq8s3cr3tPw"
SPELLINGS = (SECRET, quote_plus(SECRET))


def _shown(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def _assert_hidden(*texts: str) -> None:
    for shown in texts:
        for spelling in SPELLINGS:
            assert spelling not in shown, shown


async def _select_one_async(db: DatabaseSessionManager) -> None:
    try:
        async with db.async_transaction() as session:
            await session.execute(text("SELECT 1"))
    finally:
        await db.async_dispose()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbsession")
    return caplog


# (URL, what the error says): shapes that cannot be used, each refused at construction.
REFUSED = [
    (f"postgresql//u:{SECRET}@h/db", 'no "://"'),
    (f"postgresql:u:{SECRET}@h/db", 'no "://"'),
    (f"u:{SECRET}@h/db", 'no "://"'),
    (f"postgresql+psycopg://u:{SECRET}@h1:5x32,h2:5433/db", "several hosts"),
    (f"postgresql+psycopg://u:{SECRET}", "port must be a number"),
    (f"postgresql+psycopg://u:{SECRET}@h:notaport/db", "port must be a number"),
    (f"postgresql+psycopg://u:pa@{SECRET}@h/db", "more than one '@'"),
    (f"postgresql+psycopg://u:{SECRET}@pa@h/db", "more than one '@'"),
    (f"postgresql+psycopg://u:pa/s@{SECRET}@h/db", "more than one '@'"),
    (f"postgresql+psycopg://u@h/db?password=ab@{SECRET}", "more than one '@'"),
    (f"mysql+pymysql:///u:{SECRET}@h", "ended up in the database name"),
    (f"postgresql+psycopg://u@h/dbsslmode=x&password={SECRET}", "password-like"),
    (f"sqlite://u:{SECRET}@h/app.db", "SQLite URLs have no user"),
    (f"http://u:{SECRET}@x/db", "no dialect 'http'"),
    (f"nosuchdb://u:{SECRET}@x/db", "no dialect 'nosuchdb'"),
    (f"postgresql+nosuch://u:{SECRET}@x/db", "no driver 'nosuch' for 'postgresql'"),
    (f"postgresql++psycopg://u:{SECRET}@x/db", "Check the spelling"),
    # found by tests/test_properties.py: a scheme the masking did not recognise, no "@"
    (f"/qlite://u:{SECRET}", "not a valid database URL"),
    (f"postgresql+psycopg?//u:{SECRET}/db", 'no "://"'),
    (f"postgresql://u?127.0.0.1/db?password={SECRET}", "query parameter name contains"),
    (f"mysql+pymysql:///u:{SECRET}%40{SECRET}127.0.0.1", "ended up in the database name"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
@pytest.mark.parametrize("argument", ["url", "async_url"])
def test_unusable_url_is_refused_without_its_password(
    url: str, message: str, argument: str, logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        DatabaseSessionManager(**{argument: url})  # type: ignore[arg-type]

    assert f"{argument}=" in str(caught.value)
    assert "***" in str(caught.value)
    _assert_hidden(_shown(caught.value), logs.text)


# (URL, how the error shows it): the password masked, and all the rest kept that can be kept
# safely, so that the user recognises the URL (the scheme, a plain user name, the host).
SHOWN = [
    (f"postgresql//u:{SECRET}@h/db", "postgresql//u:***@h/db"),
    (f"postgresql:u:{SECRET}@h/db", "postgresql:***@h/db"),  # "u:" could be the password
    (f"u:{SECRET}@h/db", "u:***@h/db"),
    (f"postgresql+psycopg://u:{SECRET}", "postgresql+psycopg://u:***"),
    (f"postgresql+psycopg://u:pa:{SECRET}", "postgresql+psycopg://u:***"),
    (f"postgresql+psycopg://u:{SECRET}/db", "postgresql+psycopg://u:***"),
    (f"postgresql+psycopg://u:pa@{SECRET}@h/db", "postgresql+psycopg://u:***@h/db"),
    (f"postgresql+psycopg://u:pa:{SECRET}@x@h/db", "postgresql+psycopg://u:***@h/db"),
    (f"postgresql+psycopg://u s:{SECRET}@x@h/db", "postgresql+psycopg://***@h/db"),  # not plain
    ("postgresql+psycopg://us@er@h/db", "postgresql+psycopg://***@h/db"),
    (
        f"postgresql+psycopg://u@h/db?password=ab@{SECRET}",
        "postgresql+psycopg://u@h/db?password=***",
    ),
    (f"http://u:{SECRET}@x/db", "http://u:***@x/db"),
    # no scheme: everything after the first ":" (a password may hold a ":" itself)
    (f"/qlite://u:pa:{SECRET}", "/qlite:***"),
    ("not a url", "not a url"),  # nothing that could be a password: shown as given
    # the host part starts after every "/": a password there is masked too
    (f"nosuchdb:////u:{SECRET}", "nosuchdb:////u:***"),
    # a ":" past the host part (in the database name) is no password
    ("postgresql+nosuch://X/app:v2", "postgresql+nosuch://X/app:v2"),
]


@pytest.mark.parametrize(("url", "shown"), SHOWN)
def test_a_refused_url_is_shown_with_only_its_password_masked(url: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSessionManager(url)
    assert str(caught.value).startswith(f"url={shown!r}"), str(caught.value)


def test_a_sqlalchemy_url_object_is_checked_too() -> None:
    url = URL.create("postgresql+psycopg", username="u", password=SECRET, host="pa@h")
    with pytest.raises(ConfigurationError, match="more than one '@'|contains an '@'") as caught:
        DatabaseSessionManager(url)
    _assert_hidden(_shown(caught.value))


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db",
        f"postgresql+psycopg://u:{quote_plus('p@ss:/?#' + SECRET)}@127.0.0.1:1/db",
        f"postgresql+psycopg://u@127.0.0.1:1/db?password={SECRET}",
        # found by tests/test_properties.py: an empty password ("u:@") kept the query's in sight
        f"postgresql+psycopg://:@127.0.0.1:1/db?password={SECRET}",
        f"postgresql+psycopg://u@127.0.0.1:1/db?sslmode=disable&password={SECRET}&connect_timeout=5",
        f"postgresql+psycopg://u:{SECRET}@/db?host=127.0.0.1:1&host=127.0.0.2:1",
        f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/db",
        f"mysql+pymysql://u:{SECRET}@127.0.0.1:1/db",
        f"mysql+pymysql://u@127.0.0.1:1/db?password={SECRET}",
        f"mariadb+aiomysql://u:{SECRET}@127.0.0.1:1/db",
    ],
)
def test_usable_url_never_shows_its_password(url: str, logs: pytest.LogCaptureFixture) -> None:
    db = DatabaseSessionManager(url)
    shown = [repr(db), str(db.url), str(db.async_url)]
    shown += [repr(db.engine), repr(db.async_engine)]

    with pytest.raises(DatabaseUnavailableError) as sync_error, db.transaction() as session:
        session.execute(text("SELECT 1"))

    with pytest.raises(DatabaseUnavailableError) as async_error:
        asyncio.run(_select_one_async(db))
    db.dispose()

    _assert_hidden(*shown, _shown(sync_error.value), _shown(async_error.value), logs.text)
    assert "***" in repr(db)


def test_other_secret_query_values_are_masked_in_our_messages(
    logs: pytest.LogCaptureFixture,
) -> None:
    """sslpassword stays in the query (SQLAlchemy's own str(url) shows it): ours mask it."""
    db = DatabaseSessionManager(
        f"postgresql+psycopg://u@127.0.0.1:1/db?sslmode=disable&sslpassword={SECRET}"
    )
    with pytest.raises(DatabaseUnavailableError) as caught, db.transaction() as session:
        session.execute(text("SELECT 1"))
    db.dispose()

    assert "sslpassword=***" in repr(db)
    assert "sslmode=disable" in repr(db)  # only the secret values are masked
    _assert_hidden(repr(db), _shown(caught.value), logs.text)


def test_a_url_password_wins_over_a_query_password() -> None:
    db = DatabaseSessionManager(f"postgresql+psycopg://u:{SECRET}@h/db?password=other")

    assert db.url is not None
    assert db.url.password == SECRET  # the query's stays in the query, masked
    assert dict(db.url.query) == {"password": "other"}
    assert "other" not in repr(db)


def test_query_password_moves_where_sqlalchemy_masks_it() -> None:
    db = DatabaseSessionManager(f"postgresql+psycopg://u@h/db?sslmode=require&password={SECRET}")

    assert db.url is not None
    assert db.url.password == SECRET  # the driver gets it, as the password
    assert dict(db.url.query) == {"sslmode": "require"}
    assert SECRET not in repr(db.engine.url)


def test_unreachable_server_at_first_use_names_host_and_port(
    logs: pytest.LogCaptureFixture,
) -> None:
    """No lifespan: the first request's connect fails with our error, the driver's as cause;
    the client gets 503 (docs/scaling.md), an app handler for the error gets the error."""
    caught: list[DatabaseUnavailableError] = []

    def app_for(db: DatabaseSessionManager, *, handler: bool) -> FastAPI:
        app = FastAPI()

        @app.get("/")
        def read(session: Session = Depends(db.session)) -> int:
            return int(session.scalar(text("SELECT 1")) or 0)

        if handler:

            @app.exception_handler(DatabaseUnavailableError)
            async def keep(request: object, exc: DatabaseUnavailableError) -> PlainTextResponse:
                caught.append(exc)
                return PlainTextResponse("down", status_code=503)

        return app

    db = DatabaseSessionManager(f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/app")
    with TestClient(app_for(db, handler=False)) as client:
        response = client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert SECRET not in response.text
    _assert_hidden(logs.text)

    with TestClient(app_for(db, handler=True)) as client:
        assert client.get("/").text == "down"
    message = str(caught[0])
    assert "Cannot reach the database at 127.0.0.1:1 " in message
    assert "postgresql+psycopg://app:***@127.0.0.1:1/app" in message
    chain, error = [], caught[0].__cause__  # the request's own error, then the driver's
    while error is not None:
        chain.append(type(error).__module__)
        error = error.__cause__
    assert any(module.startswith("psycopg") for module in chain)
    _assert_hidden(_shown(caught[0]))


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("postgresql+asyncpg://app@127.0.0.1:1/app", ConnectionRefusedError),
        ("mysql+aiomysql://app@127.0.0.1:1/app", Exception),
    ],
)
def test_unreachable_server_at_first_async_use(url: str, cause: type[Exception]) -> None:
    db = DatabaseSessionManager(async_url=url)

    with pytest.raises(DatabaseUnavailableError, match=r"at 127\.0\.0\.1:1 ") as caught:
        asyncio.run(_select_one_async(db))
    assert isinstance(caught.value.__cause__, cause)
    assert isinstance(caught.value, ConnectionError)


def test_driver_refusing_connect_arguments_is_a_configuration_error() -> None:
    db = DatabaseSessionManager(
        "postgresql+psycopg://app@127.0.0.1:1/app", engine_options={"connect_args": {"bogus": 1}}
    )
    refused = pytest.raises(ConfigurationError, match="refused the connection arguments")
    with refused as caught, db.transaction() as session:
        session.execute(text("SELECT 1"))
    assert caught.value.__cause__ is not None


# -- the masking functions themselves (the unit under test: every message, log line and repr()
# above goes through them; these pin what mutation testing found unpinned, issue 18) ---------


def test_the_secrets_of_a_url_are_its_password_and_password_like_query_values() -> None:
    url = make_url(f"postgresql+psycopg://u:{SECRET}@h/db?sslpassword=a1b&sslpassword=c2d&x=1")
    assert _secrets.secrets_of(url) == (SECRET, "a1b", "c2d")
    assert _secrets.secrets_of(make_url("postgresql+psycopg://u@h/db?api_key=k3y")) == ("k3y",)
    assert _secrets.secrets_of(None) == ()


def test_a_longer_secret_is_masked_whole_before_a_shorter_one_inside_it() -> None:
    longer = f"0{SECRET}9"  # sorts before SECRET: only the length puts it first
    text = f"failed: {longer} and {SECRET}"
    assert _secrets.mask_text(text, [SECRET, longer]) == "failed: *** and ***"
    assert _secrets.mask_text(text, [longer, SECRET]) == "failed: *** and ***"


def test_secrets_of_three_characters_are_masked_and_shorter_ones_are_not() -> None:
    assert _secrets.mask_text("user abc, pw ab", ["abc", "ab"]) == "user ***, pw ab"


def test_a_urls_own_secrets_are_masked_in_free_text() -> None:
    """A driver's message may quote the password bare (no "password=", no URL around it)."""
    url = make_url(f"postgresql+psycopg://u:{SECRET}@h/db?sslpassword=k3yk3y")
    text = f"auth failed with {SECRET} and key k3yk3y"
    assert _urls.mask_text(text, url) == "auth failed with *** and key ***"
    assert _urls.mask_text(text) == text  # without the URL, nothing says these are secrets


def test_every_url_encoding_of_a_secret_is_masked() -> None:
    secret = "p/ss w@rd"
    for spelling in (secret, "p%2Fss+w%40rd", "p%2Fss%20w%40rd"):
        assert _secrets.mask_text(f"in {spelling}.", [secret]) == "in ***."


_EXPECTED = (
    '"dialect+driver://user:password@host:port/dbname", for example '
    '"postgresql+psycopg://app@localhost/app" or "sqlite:///./app.db".'
)
_SPELLING = (
    'Check the spelling of "dialect+driver", e.g. "postgresql+psycopg", "postgresql+asyncpg", '
    '"mysql+pymysql", "mariadb+aiomysql", "sqlite" (a third-party dialect must be installed).'
)
_AT = (
    "the password (or the user name, or a query value) contains an '@' that is not "
    "percent-encoded. Encode it as %40, e.g. with urllib.parse.quote_plus(password), or "
    "build the URL with sqlalchemy.URL.create()."
)
_SQLITE = (
    'SQLite URLs have no user, password or host. Write "sqlite:///relative/path.db", '
    '"sqlite:////absolute/path.db" or "sqlite://" (in memory).'
)


# The whole message for each kind of refused URL: it is the user's only guide to the fix.
@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql//u@h/db",
            f"url='postgresql//u@h/db' is not a valid database URL. Expected {_EXPECTED} It has "
            'no "://" after the dialect name: write "dialect+driver://..." (two slashes before '
            "the user or host).",
        ),
        (
            "postgresql+psycopg://u@h1:5x32,h2:5433/db",
            "url='postgresql+psycopg://u@h1:5x32,h2:5433/db' is not a valid database URL. "
            f"Expected {_EXPECTED} It names several hosts: each must be host or host:port with "
            'a numeric port ("postgresql+psycopg://user@h1:5432,h2:5432/dbname"), or write '
            'them as query parameters, "postgresql+psycopg://user@/dbname?host=h1:5432&host='
            'h2:5432".',
        ),
        (
            "postgresql+psycopg://u@h:notaport/db",
            "url='postgresql+psycopg://u@h:notaport/db' is not a valid database URL. Expected "
            f"{_EXPECTED} A port must be a number; special characters in the user or password "
            "(@ : / ? # %) must be percent-encoded: urllib.parse.quote_plus(password).",
        ),
        (
            "postgresql+psycopg://u:pa@ss@h/db",
            "url='postgresql+psycopg://u:***@h/db' has more than one '@': the password (or the "
            "user name, or a query value) contains an '@' that is not percent-encoded. Encode "
            "it as %40, e.g. with urllib.parse.quote_plus(password), or build the URL with "
            "sqlalchemy.URL.create().",
        ),
        (
            "mysql+pymysql:///u:pw@h",
            "url='mysql+pymysql:///u:***@h': what looks like user:password@host ended up in the "
            'database name. Write "dialect+driver://user:password@host/dbname" (two slashes).',
        ),
        (
            "postgresql+psycopg://u@h/dbsslmode=x&password=pw",
            "url='postgresql+psycopg://u@h/dbsslmode=x&password=***': the database name "
            "contains a password-like 'key=value': is the \"?\" before the query string "
            'missing? Write ".../dbname?password=..." (or put the password before the host: '
            "user:password@host).",
        ),
        (
            URL.create("mysql+pymysql", database=f"u:{SECRET}@h"),
            "url='mysql+pymysql:///u:***@h': what looks like user:password@host ended up in "
            'the database name. Write "dialect+driver://user:password@host/dbname" (two '
            "slashes).",
        ),
        (
            URL.create("postgresql+psycopg", host="pa@h"),
            f"url='postgresql+psycopg://pa@h' has more than one '@': {_AT}",
        ),
        (  # a query value holding "://" and an "@": counted from the first "://"
            "postgresql+psycopg://u@h/db?x=http://a@b",
            f"url='postgresql+psycopg://***@b' has more than one '@': {_AT}",
        ),
        (
            f"postgresql://u?127.0.0.1/db?password={SECRET}",
            "url='postgresql://u?127.0.0.1/db?password=***': a query parameter name contains "
            "'?', '/' or '@', so a separator is misplaced (a second '?', or a '?' where the "
            "'@' before the host belongs). Write "
            '"dialect+driver://user:password@host/dbname?key=value&key=value".',
        ),
        ("sqlite://u@h/app.db", f"url='sqlite://u@h/app.db': {_SQLITE}"),
        ("sqlite://h/app.db", f"url='sqlite://h/app.db': {_SQLITE}"),
        ("sqlite://u@/app.db", f"url='sqlite://u@/app.db': {_SQLITE}"),
        ("sqlite://:pw@/app.db", f"url='sqlite://:***@/app.db': {_SQLITE}"),
        (
            "nosuchdb://u@x/db",
            f"url='nosuchdb://u@x/db': SQLAlchemy has no dialect 'nosuchdb'. {_SPELLING}",
        ),
        (
            "postgresql+nosuch://u@x/db",
            "url='postgresql+nosuch://u@x/db': SQLAlchemy has no driver 'nosuch' for "
            f"'postgresql'. {_SPELLING}",
        ),
        (
            12,
            "url must be a database URL string or a sqlalchemy.URL, not int. Example: "
            'DatabaseSessionManager("postgresql+psycopg://user@host/dbname").',
        ),
    ],
)
def test_each_kind_of_refused_url_gets_its_whole_message(url: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSessionManager(url)  # type: ignore[arg-type]
    assert str(caught.value) == message


_HOSTS_HINT = "It names several hosts"
_PORT_HINT = "A port must be a number"


# Which hint a URL that does not parse gets: "several hosts" only when the host part (after
# the first "://" and the last "@", before the first "/") has a comma.
@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("postgresql+psycopg://u@h1:5x32,h2:5433", _HOSTS_HINT),  # no "/" after the hosts
        ("postgresql+psycopg://u@h1:5x32,h2/db?x=http://y", _HOSTS_HINT),  # a 2nd "://"
        ("postgresql+psycopg://u,v@h:bad/db", _PORT_HINT),  # the comma is in the user
        ("postgresql+psycopg://u@a,b@h:bad/db", _PORT_HINT),  # ... before the last "@"
        ("postgresql+psycopg://u@h:bad/db,x", _PORT_HINT),  # ... in the database name
    ],
)
def test_the_hint_looks_at_the_host_part_only(url: str, hint: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a valid database URL") as caught:
        DatabaseSessionManager(url)
    assert hint in str(caught.value)
    assert (_HOSTS_HINT if hint == _PORT_HINT else _PORT_HINT) not in str(caught.value)


# URLs whose shape looks odd but is what the user meant: accepted as given.
@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("postgresql+psycopg:///reports:2024", "reports:2024"),  # a ":" but no "@" anywhere
        ("postgresql+psycopg://u@h/db?appX=1", "db"),  # only "?", "/", "@" mark a bad key
        ("sqlite:///file:a%40b?mode=ro&uri=true", "file:a@b"),  # SQLite: "%40" is a file's
    ],
)
def test_unusual_but_meant_urls_are_accepted(url: str, database: str) -> None:
    db = DatabaseSessionManager(url)
    assert db.url is not None
    assert db.url.database == make_url(url).database  # ours is SQLAlchemy's reading of it
    assert unquote(db.url.database or "") == database  # (2.0.30 keeps "%40", newer decodes it)


def test_a_sqlite_file_name_may_hold_several_at_signs(tmp_path: Path) -> None:
    db = DatabaseSessionManager(f"sqlite:///{tmp_path}/a@b@c.db")
    with db.transaction() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    db.dispose()
    assert (tmp_path / "a@b@c.db").exists()
