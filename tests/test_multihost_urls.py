"""Multi-host PostgreSQL URLs (failover) parse in both spellings and never show the password."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager

SQLALCHEMY_FORM = (
    "postgresql+psycopg://app:s3cret@/appdb?host=db1:5432&host=db2:5433"
    "&target_session_attrs=read-write"
)


@pytest.mark.parametrize(
    "given",
    [
        SQLALCHEMY_FORM,
        "postgresql+psycopg://app:s3cret@db1:5432,db2:5433/appdb?target_session_attrs=read-write",
    ],
    ids=["sqlalchemy", "libpq"],
)
def test_both_spellings_give_the_same_url_with_the_password_masked(given: str) -> None:
    db = DatabaseSessionManager(given)
    assert db.url == make_url(SQLALCHEMY_FORM)
    assert db.url is not None
    assert db.url.query["host"] == ("db1:5432", "db2:5433")
    assert db.async_url is not None
    assert db.async_url.query == db.url.query  # the async twin keeps every host
    assert "s3cret" not in repr(db)
    assert "app:***@" in repr(db)


def test_hosts_without_ports_and_without_user() -> None:
    db = DatabaseSessionManager("postgresql://db1,db2/appdb")
    assert db.url == make_url("postgresql:///appdb?host=db1&host=db2")  # no host, no user


def test_hosts_without_a_database() -> None:
    db = DatabaseSessionManager("postgresql+psycopg://app@db1:5432,db2:5432")
    assert db.url == make_url("postgresql+psycopg://app@/?host=db1:5432&host=db2:5432")


def test_asyncpg_multi_host_keeps_the_ports_for_asyncpg() -> None:
    db = DatabaseSessionManager(async_url="postgresql+asyncpg://app:s3cret@db1:5432,db2:5432/app")
    assert db.async_url is not None
    assert db.async_url.query["host"] == ("db1:5432", "db2:5432")
    assert db.async_engine.dialect.driver == "asyncpg"  # no connection: engines are lazy


@pytest.mark.parametrize(
    ("url", "side"),
    [
        ("postgresql+psycopg://app:s3cret@/appdb?host=db1:54x2&host=db2", "url"),
        ("postgresql+asyncpg://app:s3cret@db1,db2:5432/appdb", "async_url"),
    ],
    ids=["port-not-a-number", "asyncpg-port-missing"],
)
def test_a_malformed_multi_host_url_is_our_error_without_the_password(url: str, side: str) -> None:
    db = DatabaseSessionManager(**{side: url})
    with pytest.raises(ConfigurationError, match="host:port") as caught:
        _ = db.engine if side == "url" else db.async_engine  # checked when the engine is made
    assert "s3cret" not in str(caught.value)


def test_a_bad_port_in_libpq_hosts_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="several hosts") as caught:
        DatabaseSessionManager("postgresql+psycopg://app:s3cret@db1:54x2,db2/appdb")
    assert "s3cret" not in str(caught.value)
