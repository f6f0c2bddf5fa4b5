"""create_test_database / drop_test_database: names that need quoting (hyphens, capitals)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import URL, MetaData, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from fastapi_dbsession.testing import create_test_database, drop_test_database
from tests.models import Base


@pytest.fixture(
    params=[
        pytest.param("postgres_database", marks=pytest.mark.postgresql),
        pytest.param("mariadb_database", marks=pytest.mark.mariadb),
    ]
)
def server_url(request: pytest.FixtureRequest) -> URL:
    """A URL on a server whose database exists (the test run's own)."""
    url: URL = request.getfixturevalue(request.param)
    return url


def databases(server: URL) -> list[str]:
    engine = create_engine(server, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if server.get_backend_name() == "postgresql":
                return list(connection.scalars(text("SELECT datname FROM pg_database")))
            return list(connection.scalars(text("SHOW DATABASES")))
    finally:
        engine.dispose()


def test_a_name_with_a_hyphen_and_capitals_is_created_and_dropped(server_url: URL) -> None:
    suffix = f"My-Run-{uuid.uuid4().hex[:6]}"
    url = create_test_database(server_url, metadata=Base.metadata, suffix=suffix)
    try:
        assert url.database == f"{server_url.database}_test_{suffix}"
        assert url.database in databases(server_url)  # exactly that name, case kept
        engine = create_engine(url, poolclass=NullPool)
        try:
            assert "items" in inspect(engine).get_table_names()  # the schema was built in it
        finally:
            engine.dispose()
        again = create_test_database(server_url, metadata=MetaData(), suffix=suffix)
        assert again == url  # an existing one is dropped and created empty
        engine = create_engine(url, poolclass=NullPool)
        try:
            assert inspect(engine).get_table_names() == []
            with engine.connect():  # an open connection does not stop the drop
                drop_test_database(url)
        finally:
            engine.dispose()
    finally:
        drop_test_database(url)
    assert url.database not in databases(server_url)
