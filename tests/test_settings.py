"""DatabaseSettings: environment, .env, secret files, typed errors naming the variable."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import URL, create_engine, text
from sqlalchemy.orm import Session

from fastapi_dbsession import (
    CommandTimeoutError,
    ConfigurationError,
    DatabaseSessionManager,
    DatabaseSettings,
    DatabaseUnavailableError,
)
from tests.conftest import Backend

SENTINEL = "s3cret-Pa55word"


def test_settings_from_the_environment_configure_the_pool(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", backend.url.render_as_string(hide_password=False))
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "0")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "0.5")
    monkeypatch.setenv("DATABASE_STARTUP_RETRIES", "0")
    db = DatabaseSessionManager.from_settings(DatabaseSettings())
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/one")
    def one(session: Session = Depends(db.session)) -> int:
        return int(session.execute(text("SELECT 1")).scalar_one())

    with TestClient(app) as client:
        assert client.get("/one").json() == 1
        status = db.pool_status()["sync"]
    assert (status.size, status.capacity) == (3, 3)
    assert db.engine.pool.timeout() == 0.5  # type: ignore[attr-defined]


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        f"DATABASE_URL=sqlite:///{tmp_path / 'app.db'}\nDATABASE_COMMIT_POLICY=manual\n"
        "OTHER_SETTING=ignored\n"
    )
    db = DatabaseSessionManager.from_settings(DatabaseSettings())
    assert db.default_commit_policy == "manual"
    assert db.url is not None
    assert db.url.database == str(tmp_path / "app.db")


def test_password_from_a_secrets_directory_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "database_password").write_text(SENTINEL)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app@127.0.0.1:1/app")
    monkeypatch.setenv("DATABASE_STARTUP_RETRIES", "0")
    settings = DatabaseSettings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    db = DatabaseSessionManager.from_settings(settings)
    assert db.url is not None
    assert db.url.password == SENTINEL  # it reached the URL...
    with (
        pytest.raises(DatabaseUnavailableError) as caught,
        TestClient(FastAPI(lifespan=db.lifespan)),
    ):
        pass
    shown = [repr(settings), str(settings), repr(db), str(caught.value), str(settings.model_dump())]
    for text_shown in shown:  # ...and shows nowhere
        assert SENTINEL not in text_shown
    assert "app:***@127.0.0.1:1" in str(caught.value)


def test_bad_value_names_the_variable_and_hides_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://app:{SENTINEL}@db/app")
    monkeypatch.setenv("DATABASE_PASSWORD", SENTINEL)
    monkeypatch.setenv("DATABASE_POOL_SIZE", "ten")
    monkeypatch.setenv("DATABASE_POOL_SATURATION_WARNING", "1.5")
    with pytest.raises(ValidationError) as caught:
        DatabaseSettings()
    message = str(caught.value)
    assert "DATABASE_POOL_SIZE" in message
    assert "valid integer" in message
    assert "DATABASE_POOL_SATURATION_WARNING" in message
    assert "ten" not in message
    assert SENTINEL not in message


def test_without_the_extra_the_core_and_from_env_work(tmp_path: Path) -> None:
    script = f"""
import sys
sys.modules["pydantic_settings"] = None  # as if pydantic-settings were not installed
import os
os.environ["DATABASE_URL"] = "sqlite:///{tmp_path / "app.db"}"
import fastapi_dbsession
db = fastapi_dbsession.DatabaseSessionManager.from_env()
with db.transaction() as session:
    from sqlalchemy import URL, text
    assert session.execute(text("SELECT 1")).scalar_one() == 1
try:
    fastapi_dbsession.DatabaseSettings
except fastapi_dbsession.MissingDriverError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert 'pip install "fastapi-dbsession[settings]"' in result.stdout


def _primary_and_replica(tmp_path: Path) -> tuple[Path, Path]:
    """Two SQLite files whose table ``origin`` says which one answered."""
    primary, replica = tmp_path / "primary.db", tmp_path / "replica.db"
    for path, where in ((primary, "primary"), (replica, "replica")):
        with DatabaseSessionManager(f"sqlite:///{path}").transaction() as session:
            session.execute(text("CREATE TABLE origin (name TEXT)"))
            session.execute(text("INSERT INTO origin VALUES (:where)"), {"where": where})
    return primary, replica


def test_observability_and_replica_variables_reach_the_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = _primary_and_replica(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{primary}")
    monkeypatch.setenv("DATABASE_REPLICA_URLS", f'["sqlite:///{replica}"]')
    monkeypatch.setenv("DATABASE_NAME", "orders")
    monkeypatch.setenv("DATABASE_RECORD_QUERIES", "true")
    monkeypatch.setenv("DATABASE_SLOW_QUERY_THRESHOLD", "0.000001")  # every statement is slow
    monkeypatch.setenv("DATABASE_POOL_SATURATION_WARNING", "none")
    caplog.set_level(logging.INFO, logger="fastapi_dbsession")
    db = DatabaseSessionManager.from_settings(DatabaseSettings())
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/origin")
    def origin(session: Session = Depends(db.read_session)) -> str:
        return str(session.execute(text("SELECT name FROM origin")).scalar_one())

    with TestClient(app) as client:
        assert client.get("/origin").json() == "replica"  # DATABASE_REPLICA_URLS

    by_logger = {record.name: record for record in caplog.records}
    recorded = by_logger["fastapi_dbsession.queries"]  # DATABASE_RECORD_QUERIES
    assert recorded.database == "orders"  # type: ignore[attr-defined]  # DATABASE_NAME
    assert "SELECT name FROM origin" in by_logger["fastapi_dbsession.slow_queries"].getMessage()
    assert DatabaseSettings().pool_saturation_warning is None  # "none" turns the warning off


@pytest.mark.postgresql
def test_deadline_variables_reach_the_engine(
    postgres_schema: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_schema.render_as_string(hide_password=False))
    monkeypatch.setenv("DATABASE_COMMAND_TIMEOUT", "0.5")
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "none")
    settings = DatabaseSettings()
    assert settings.connect_timeout is None  # "none": the driver's own
    db = DatabaseSessionManager.from_settings(settings)
    try:
        with (
            pytest.raises(CommandTimeoutError, match=r"command_timeout=0\.5 seconds"),
            db.transaction() as session,
        ):
            session.execute(text("SELECT pg_sleep(3)"))
        assert db.engine.pool.checkedout() == 0
    finally:
        db.dispose()


def test_settings_defaults_are_the_managers_defaults() -> None:
    """A variable left unset behaves as the constructor argument left out."""
    constructor = inspect.signature(DatabaseSessionManager).parameters
    arguments = DatabaseSettings(url="sqlite://").manager_arguments()
    for name, value in arguments.items():
        if name in {"url", "async_url"}:
            continue
        default = constructor[name].default
        assert value == (list(default) if isinstance(default, tuple) else default), name


def test_from_env_reads_replica_urls_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    primary, replica = _primary_and_replica(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{primary}")
    monkeypatch.setenv("DATABASE_REPLICA_URLS", f'["sqlite:///{replica}"]')
    db = DatabaseSessionManager.from_env()
    try:
        with db.transaction(read_only=True) as session:
            assert session.execute(text("SELECT name FROM origin")).scalar_one() == "replica"
        with db.transaction() as session:
            assert session.execute(text("SELECT name FROM origin")).scalar_one() == "primary"
    finally:
        db.dispose()

    secret_url = f"postgresql+psycopg://app:{SENTINEL}@replica/app"
    cases = {
        f'["{secret_url}"': "DATABASE_REPLICA_URLS is not valid JSON",
        f'{{"r": "{secret_url}"}}': "must be a JSON array of URL strings, not an object",
        f'["{secret_url}", 5]': "not an array with an item that is not a string",
        f'"{secret_url}"': "not a string",
    }
    for raw, expected in cases.items():
        monkeypatch.setenv("DATABASE_REPLICA_URLS", raw)
        with pytest.raises(ConfigurationError, match=expected) as caught:
            DatabaseSessionManager.from_env()
        assert SENTINEL not in str(caught.value), raw


# -- several databases: DATABASE_TWOPHASE, DATABASE_BINDS ------------------------------------


def _bind_manager(source: str, tmp_path: Path) -> DatabaseSessionManager:
    """The manager ``from_env()`` or ``from_settings()`` builds from the variables set."""
    if source == "from_env":
        return DatabaseSessionManager.from_env()
    return DatabaseSessionManager.from_settings(DatabaseSettings())


@pytest.fixture(params=["from_env", "settings"])
def source(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_binds_variable_routes_a_model_to_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    from tests.test_binds import Base, Invoice, Note

    own, billing = tmp_path / "app.db", tmp_path / "billing.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{own}")
    monkeypatch.setenv("DATABASE_BINDS", f'{{"billing": "sqlite:///{billing}"}}')
    db = _bind_manager(source, tmp_path)
    try:
        Base.metadata.create_all(db.engine, tables=[Note.__table__])
        with db.transaction() as session:
            Base.metadata.create_all(session.get_bind(Invoice), tables=[Invoice.__table__])
        with db.transaction() as session:
            session.add_all([Note(body="n"), Invoice(amount=5)])
    finally:
        db.dispose()
    for path, table in ((own, "bind_notes"), (billing, "bind_invoices")):
        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1
        engine.dispose()


def test_twophase_variable_makes_sessions_two_phase(
    monkeypatch: pytest.MonkeyPatch, source: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app@127.0.0.1:1/app")  # not reached
    monkeypatch.setenv("DATABASE_TWOPHASE", "true")
    db = _bind_manager(source, tmp_path)
    with db.transaction() as session:  # no statement: no connection
        assert session.twophase is True
    monkeypatch.setenv("DATABASE_URL", "sqlite://")  # the manager's own check applies
    with pytest.raises(ConfigurationError, match="twophase=True needs PostgreSQL"):
        _bind_manager(source, tmp_path)


def test_binds_and_twophase_variables_that_do_not_parse_never_show_a_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    secret_url = f"postgresql+psycopg://app:{SENTINEL}@db/billing"
    cases = {
        f'{{"billing": "{secret_url}"': "DATABASE_BINDS is not valid JSON",
        f'["{secret_url}"]': "must be a JSON object of bind keys to URL strings, not an array",
        f'{{"billing": ["{secret_url}"]}}': "an object with a value that is not a string",
        f'{{"billing": "nosuch://app:{SENTINEL}@db/x"}}': r"binds\['billing'\]",
    }
    for raw, expected in cases.items():
        monkeypatch.setenv("DATABASE_BINDS", raw)
        with pytest.raises(ConfigurationError, match=expected) as caught:
            DatabaseSessionManager.from_env()
        assert SENTINEL not in str(caught.value), raw
    monkeypatch.setenv("DATABASE_BINDS", f'["{secret_url}"]')
    with pytest.raises(ValidationError, match="DATABASE_BINDS") as invalid:
        DatabaseSettings()
    assert SENTINEL not in str(invalid.value)
    monkeypatch.setenv("DATABASE_BINDS", f'{{"billing": "{secret_url}"}}')
    settings = DatabaseSettings()
    db = DatabaseSessionManager.from_settings(settings)
    assert "binds={'billing': 'postgresql+psycopg://app:***@db/billing'}" in repr(db)
    assert SENTINEL not in repr(db) + repr(settings) + repr(DatabaseSessionManager.from_env())
    monkeypatch.setenv("DATABASE_TWOPHASE", "maybe")
    with pytest.raises(ConfigurationError, match="DATABASE_TWOPHASE='maybe' is not a valid flag"):
        DatabaseSessionManager.from_env()
