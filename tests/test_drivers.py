"""Per-driver connect arguments: URL query numbers, options per side, the PgBouncer switch.

Each test connects for real (a throwaway cluster from the harness): the failures these guard
against only show at connect time (asyncpg's ``TypeError`` for a psycopg argument, a string
cache size compared with a number).
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, make_url, text

from fastapi_dbsession import (
    ConfigurationError,
    DatabaseSessionManager,
    DatabaseSettings,
    MissingDriverError,
)
from tests.clusters import Cluster
from tests.connect_arguments import driver_arguments

ASYNCIO = pytest.mark.parametrize("anyio_backend", ["asyncio"])

PROBE = "SELECT current_setting('application_name')"


async def _async_probe(db: DatabaseSessionManager) -> object:
    """The async side's application_name, read on a fresh connection; the engine disposed."""
    try:
        async with db.async_engine.connect() as connection:
            return await connection.scalar(text(PROBE))
    finally:
        await db.async_dispose()


@pytest.mark.topology
@pytest.mark.anyio
@ASYNCIO
async def test_psycopg_connect_args_stay_on_the_sync_side_of_an_asyncpg_twin(
    pg_primary: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    db = DatabaseSessionManager(
        pg_primary.url("psycopg"),
        async_url=pg_primary.url("asyncpg"),
        engine_options={"pool_size": 3, "connect_args": {"application_name": "sync-side"}},
    )
    try:
        with db.engine.connect() as connection:
            assert connection.scalar(text(PROBE)) == "sync-side"
        with caplog.at_level(logging.WARNING, logger="fastapi_dbsession"):
            async with db.async_engine.connect() as connection:  # no TypeError from asyncpg
                assert await connection.scalar(text("SELECT 1")) == 1
        assert db.async_engine.pool.size() == 3  # the pool options are still shared
        assert "application_name" in caplog.text
        assert "async_engine_options" in caplog.text
    finally:
        db.dispose()
        await db.async_dispose()


@pytest.mark.topology
@pytest.mark.anyio
@ASYNCIO
async def test_psycopg_connect_args_serve_its_own_async_twin(pg_primary: Cluster) -> None:
    db = DatabaseSessionManager(
        pg_primary.url("psycopg"), engine_options={"connect_args": {"application_name": "both"}}
    )
    assert await _async_probe(db) == "both"


@pytest.mark.topology
@pytest.mark.anyio
@ASYNCIO
async def test_async_engine_options_give_the_async_driver_its_own_connect_args(
    pg_primary: Cluster,
) -> None:
    db = DatabaseSessionManager(
        pg_primary.url("psycopg"),
        async_url=pg_primary.url("asyncpg"),
        engine_options={"connect_args": {"application_name": "sync-side"}},
        async_engine_options={"connect_args": {"server_settings": {"application_name": "a"}}},
    )
    assert await _async_probe(db) == "a"


@pytest.mark.topology
@pytest.mark.anyio
@ASYNCIO
@pytest.mark.parametrize(
    ("driver", "query", "setting"),
    [
        ("asyncpg", {"statement_cache_size": "0"}, None),  # a string: TypeError at connect
        ("asyncpg", {"prepared_statement_cache_size": "0"}, None),
        ("asyncpg", {"command_timeout": "5"}, None),
        ("psycopg", {"prepare_threshold": "none"}, ("prepare_threshold", None)),
        ("psycopg", {"prepare_threshold": "3"}, ("prepare_threshold", 3)),
    ],
)
async def test_numbers_in_the_url_query_reach_the_driver_as_numbers(
    pg_primary: Cluster, driver: str, query: dict[str, str], setting: tuple[str, object] | None
) -> None:
    url = pg_primary.url(driver, **query)
    db = DatabaseSessionManager(async_url=url)
    try:
        async with db.async_engine.connect() as connection:
            for _ in range(5):  # past psycopg's prepare threshold
                assert await connection.scalar(text("SELECT 1")) == 1
            raw = await connection.get_raw_connection()
            driver_connection = raw.driver_connection
            if setting is not None:
                assert getattr(driver_connection, setting[0]) == setting[1]
    finally:
        await db.async_dispose()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql+asyncpg://app@db/app?statement_cache_size=off", "statement_cache_size"),
        ("postgresql+psycopg://app:s3cret@db/app?prepare_threshold=never", "prepare_threshold"),
    ],
)
def test_a_url_query_number_that_does_not_parse_is_our_error(url: str, named: str) -> None:
    db = DatabaseSessionManager(async_url=url)
    with pytest.raises(ConfigurationError, match=named) as caught:
        _ = db.async_engine
    assert "s3cret" not in str(caught.value)
    assert "engine_options" in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///./app.db", "mysql+pymysql://root@db/app"])
def test_pgbouncer_on_another_database_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"pgbouncer=True is for PostgreSQL"):
        DatabaseSessionManager(url, pgbouncer=True)


@pytest.mark.topology
def test_pgbouncer_from_the_environment_and_the_settings(
    pg_primary: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_primary.url("psycopg").render_as_string())
    monkeypatch.setenv("DATABASE_PGBOUNCER", "true")
    db = DatabaseSessionManager.from_env()
    try:
        with db.engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert raw.prepare_threshold is None  # type: ignore[union-attr]
    finally:
        db.dispose()
    settings_db = DatabaseSessionManager.from_settings(DatabaseSettings())
    try:
        with settings_db.engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert raw.prepare_threshold is None  # type: ignore[union-attr]
    finally:
        settings_db.dispose()
    monkeypatch.setenv("DATABASE_PGBOUNCER", "maybe")
    with pytest.raises(ConfigurationError, match="DATABASE_PGBOUNCER"):
        DatabaseSessionManager.from_env()


# -- what each driver's connect() gets, seen at SQLAlchemy's do_connect (no server needed) ----

_PG = "postgresql+{driver}://app@127.0.0.1:1/app"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3), ("none", None), ("None", None), (" NULL ", None), ("", None)],
)
def test_prepare_threshold_in_the_url_reaches_psycopg_converted(
    value: str, expected: int | None
) -> None:
    # a URL object: make_url drops a blank query value, URL.create keeps it
    url = make_url(_PG.format(driver="psycopg")).update_query_dict({"prepare_threshold": value})
    for side in ("sync", "async"):
        seen = driver_arguments(DatabaseSessionManager(url), side=side)
        assert seen["prepare_threshold"] == expected


def test_each_numeric_query_parameter_is_converted_alone() -> None:
    """Only the last of asyncpg's numeric parameters given: the absent ones are skipped."""
    db = DatabaseSessionManager(async_url=_PG.format(driver="asyncpg") + "?timeout=4")
    seen = driver_arguments(db, side="async")
    assert seen["timeout"] == 4.0
    assert isinstance(seen["timeout"], float)


@pytest.mark.parametrize(
    ("driver", "side", "preset"),
    [
        ("psycopg", "sync", {"prepare_threshold": None}),
        ("psycopg", "async", {"prepare_threshold": None}),
        ("asyncpg", "async", {"statement_cache_size": 0, "prepared_statement_cache_size": 0}),
        ("psycopg2", "sync", {}),  # prepares nothing on the server: nothing to change
    ],
)
def test_pgbouncer_turns_off_server_side_prepared_statements(
    driver: str, side: str, preset: dict[str, object]
) -> None:
    url = _PG.format(driver=driver)
    given = {"async_url": url} if side == "async" else {"url": url}
    seen = driver_arguments(DatabaseSessionManager(**given, pgbouncer=True), side=side)
    plain = driver_arguments(DatabaseSessionManager(**given), side=side)
    assert {key: seen[key] for key in preset} == preset
    assert not set(preset) & set(plain)  # without pgbouncer=True, the driver's defaults
    assert set(seen) - set(plain) - {"prepared_statement_name_func"} == set(preset)


def test_pgbouncer_with_a_given_engine_checks_its_url() -> None:
    engine = create_engine(_PG.format(driver="psycopg"))
    db = DatabaseSessionManager(engine=engine, pgbouncer=True)
    assert db.engine is engine
    with pytest.raises(ConfigurationError, match=r"pgbouncer=True is for PostgreSQL"):
        DatabaseSessionManager(engine=create_engine("sqlite://"), pgbouncer=True)


@pytest.mark.parametrize(
    ("url", "async_url", "shared"),
    [
        (_PG.format(driver="psycopg"), None, True),  # psycopg 3 on both sides
        ("mysql+pymysql://app@127.0.0.1:1/app", None, True),  # aiomysql is built on PyMySQL
        (_PG.format(driver="psycopg"), _PG.format(driver="asyncpg"), False),
    ],
)
def test_engine_options_connect_args_reach_the_async_driver_only_if_it_takes_them(
    url: str, async_url: str | None, shared: bool, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"connect_args": {"connect_timeout": 7}}
    db = DatabaseSessionManager(url, async_url=async_url, engine_options=options)
    with caplog.at_level(logging.WARNING, logger="fastapi_dbsession"):
        seen = driver_arguments(db, side="async")
    assert (seen.get("connect_timeout") == 7) is shared
    assert ("were not given to the" in caplog.text) is not shared


def test_connect_args_with_only_an_async_third_party_driver_are_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = DatabaseSessionManager(
        async_url="mssql+aioodbc://app@db/app", engine_options={"connect_args": {"timeout": 3}}
    )
    assert db.url is None  # no sync twin known
    missing = pytest.raises(MissingDriverError, match="aioodbc")
    with caplog.at_level(logging.WARNING, logger="fastapi_dbsession"), missing:
        _ = db.async_engine
    assert "were not given" not in caplog.text
