"""Every code file the documentation includes runs here, on a real database.

docs/ includes its code blocks from docs_src/ and examples/ (``--8<-- "path"``). Each
docs_src file is imported by path with DATABASE_URL pointing at the test database, its app
is driven through TestClient, and the rows it really committed are read back through a
fresh connection. examples/testing runs as its own pytest session in a subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from fastapi_dbsession import (
    ConcurrentSessionUseError,
    SessionFinishedError,
    UnexpectedRollbackError,
)
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOCS_SRC = ROOT / "docs_src"
EXAMPLES = ROOT / "examples"

Check = Callable[[ModuleType, Backend], None]
CHECKS: dict[str, Check] = {}
ONLY_ON: dict[str, set[str]] = {}
ASYNC_ONLY: set[str] = set()
ENVIRONMENT: dict[str, dict[str, str]] = {}


def check(
    path: str,
    *,
    backends: set[str] | None = None,
    async_url: bool = False,
    env: dict[str, str] | None = None,
) -> Callable[[Check], Check]:
    """Register the check that runs ``path`` (relative to the repository root).

    Args:
        path: The documented file.
        backends: Run it on these backends only (default: all three).
        async_url: Give it the backend's asyncio URL as DATABASE_URL.
        env: More environment variables; ``{url}`` is replaced by the database URL.
    """

    def register(func: Check) -> Check:
        CHECKS[path] = func
        if backends is not None:
            ONLY_ON[path] = backends
        if async_url:
            ASYNC_ONLY.add(path)
        ENVIRONMENT[path] = env or {}
        return func

    return register


def load(path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> ModuleType:
    """Import a documented file as a fresh module, pointed at ``database_url``."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    name = "docs_" + "_".join(path.relative_to(ROOT).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def url_of(backend: Backend) -> str:
    return backend.url.render_as_string(hide_password=False)


def scalar(backend: Backend, sql: str) -> object:
    """One value read through a fresh connection: what is really committed."""
    engine = backend.admin_engine()
    try:
        with engine.connect() as connection:
            return connection.scalar(text(sql))
    finally:
        engine.dispose()


def count(backend: Backend, table: str, where: str = "") -> int:
    return int(scalar(backend, f"SELECT count(*) FROM {table} {where}"))  # type: ignore[call-overload]


def drop_tables(module: ModuleType) -> None:
    """Drop what the file created and close every pooled connection it opened."""
    manager = getattr(module, "db", None)
    engine = manager.engine if manager is not None else module.engine
    if hasattr(module, "Base"):
        module.Base.metadata.drop_all(engine)
    if manager is not None:
        manager.dispose()
    else:
        engine.dispose()


def _cases() -> Iterator[object]:
    backends = {
        "sqlite": (),
        "postgresql": (pytest.mark.postgresql,),
        "mariadb": (pytest.mark.mariadb,),
    }
    for path in sorted(CHECKS):
        for name, marks in backends.items():
            if name in ONLY_ON.get(path, backends):
                yield pytest.param(path, name, marks=marks, id=f"{path}-{name}")


# -- getting started ----------------------------------------------------------------------


@check("docs_src/getting_started/tutorial001.py")
def _getting_started_1(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        created = client.post("/notes", params={"title": "hello"})
        assert created.status_code == 201
        assert isinstance(created.json()["id"], int)
        assert count(backend, "notes") == 1


# -- the request session ------------------------------------------------------------------


@check("docs_src/request_session/tutorial001.py")
def _request_session_1(module: ModuleType, backend: Backend) -> None:
    def balance() -> object:
        return scalar(backend, "SELECT balance FROM wallets WHERE owner = 'ada'")

    with TestClient(module.app) as client:
        product = client.post("/products", json={"name": "lamp"})
        assert product.status_code == 201
        assert isinstance(product.json()["id"], int)
        assert product.json()["created_at"]
        assert count(backend, "products") == 1

        assert client.post("/wallets", params={"owner": "ada", "balance": 100}).status_code == 201
        ok = client.post("/wallets/ada/withdraw", params={"amount": 30})
        assert (ok.status_code, ok.json()) == (200, {"balance": 70})
        assert balance() == 70
        refused = client.post("/wallets/ada/withdraw", params={"amount": 100})
        assert (refused.status_code, refused.json()) == (409, {"balance": -30})
        assert balance() == 70  # rolled back
        assert client.post("/wallets/bob/withdraw", params={"amount": 1}).status_code == 404

        unchecked = client.post("/wallets/ada/withdraw-unchecked", params={"amount": 100})
        assert unchecked.status_code == 409
        assert balance() == -30  # the documented trap: a returned Response commits


@check("docs_src/request_session/tutorial002.py")
def _request_session_2(module: ModuleType, backend: Backend) -> None:
    names = [f"tag-{n}" for n in range(150)]
    with TestClient(module.app) as client:
        imported = client.post("/tags/import", json=names)
        assert (imported.status_code, imported.json()) == (200, {"imported": 150})
        assert count(backend, "tags") == 150  # both batches committed...
        assert count(backend, "tags", "WHERE name = 'not-committed'") == 0  # ...not the rest

        dry_run = client.post("/tags/dry-run", json=["x", "y"])
        assert (dry_run.status_code, dry_run.json()) == (200, {"would_have": 152})
        assert count(backend, "tags") == 150


@check("docs_src/request_session/tutorial003.py")
def _request_session_3(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        placed = client.post("/orders", params={"item": "lamp"})
        assert placed.status_code == 202
        assert count(backend, "orders", "WHERE receipt_sent") == 1  # the task committed too
        client.post("/orders", params={"item": "desk"})

        csv = client.get("/orders.csv")
        assert csv.status_code == 200
        assert [line.split(",")[1] for line in csv.text.splitlines()] == ["lamp", "desk"]

        with client.websocket_connect("/orders/live") as socket:
            socket.send_text("chair")
            assert socket.receive_text().startswith("order ")
    assert count(backend, "orders", "WHERE item = 'chair'") == 1


@check("docs_src/request_session/tutorial004.py")
def _request_session_4(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app, follow_redirects=False) as client:
        assert client.post("/signups/check", params={"email": "ada@example.org"}).status_code == 200
        assert client.post("/signups/check", params={"email": "nope"}).status_code == 422
        assert count(backend, "signups") == 1  # the returned 422 rolled back
        redirect = client.post("/signups", params={"email": "bob@example.org"})
        assert (redirect.status_code, redirect.headers["location"]) == (303, "/welcome")
        assert count(backend, "signups") == 2  # the route's own rule commits the 303


@check("docs_src/getting_started/tutorial002.py", env={"DATABASE_POOL_SIZE": "7"})
def _getting_started_2(module: ModuleType, backend: Backend) -> None:
    assert module.db.engine.pool.size() == 7  # read from DATABASE_POOL_SIZE
    with TestClient(module.app) as client:
        note_id = client.post("/notes", params={"title": "hello"}).json()["id"]
        assert client.get(f"/notes/{note_id}").json() == {"title": "hello"}
        assert client.get("/notes/999999").status_code == 404
    assert count(backend, "notes") == 1


# -- transactions -------------------------------------------------------------------------


@check("docs_src/transactions/tutorial001.py")
def _transactions_1(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        created = client.post(
            "/orders", json={"customer": "ada", "skus": ["lamp", "sold-out-desk", "chair"]}
        )
        assert created.status_code == 201
        assert created.json()["lines"] == 2  # the failed line's savepoint rolled back
    assert count(backend, "orders") == 1
    assert count(backend, "order_lines") == 2
    assert module.count_lines() == 2  # outside a request: opens a session of its own


@check("docs_src/transactions/tutorial002.py")
def _transactions_2(module: ModuleType, backend: Backend) -> None:
    module.Base.metadata.create_all(module.db.engine)
    module.charge("ada", "ok")
    with pytest.raises(module.BusinessError, match="daily limit"):
        module.charge("bob", "limit-reached")
    with pytest.raises(module.PaymentDeclined):
        module.charge("eve", "declined")
    names = "SELECT customer FROM payment_attempts ORDER BY id"
    engine = backend.admin_engine()
    try:
        with engine.connect() as connection:
            assert list(connection.scalars(text(names))) == ["ada", "bob"]
    finally:
        engine.dispose()


@check("docs_src/transactions/tutorial003.py")
def _transactions_3(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        assert client.post("/members", params={"email": "ada@example.org"}).status_code == 201
        blocked = client.post("/members", params={"email": "eve@blocked.example"})
        assert blocked.status_code == 403
    assert module.OUTBOX == ["welcome, ada@example.org"]
    assert module.RELEASED == ["eve@blocked.example"]
    assert count(backend, "members") == 1


@check("docs_src/transactions/tutorial004.py")
def _transactions_4(module: ModuleType, backend: Backend) -> None:
    from datetime import date

    module.Base.metadata.create_all(module.db.engine)
    day = date(2026, 1, 31)
    with module.db.transaction() as session:
        session.add_all([module.Sale(day=day, amount=30), module.Sale(day=day, amount=12)])
    assert module.close_day(day) == 42
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"):
        module.close_day(day)  # closing twice fails and rolls back...
    assert count(backend, "closed_days") == 1
    assert count(backend, "job_log") == 2  # ...but its log entry (REQUIRES_NEW) stays


@check("examples/service_layer/app.py")
def _service_layer(module: ModuleType, backend: Backend) -> None:
    """The sections the docs include, run: a transfer commits and its e-mail goes out; one
    the balance cannot cover answers 409 and moves nothing (tests/test_examples.py runs the
    rest of the example)."""
    with TestClient(module.app) as client:
        assert client.post(
            "/transfers", json={"source": "ada", "target": "bob", "amount": 30}
        ).json() == {"balance": 70}
        refused = client.post("/transfers", json={"source": "bob", "target": "ada", "amount": 99})
        assert refused.status_code == 409
        assert client.get("/accounts").json() == {"ada": 70, "bob": 30}
    assert module.OUTBOX == ["to ada: you sent 30 to bob"]


# -- async --------------------------------------------------------------------------------


@check("docs_src/async_sessions/tutorial001.py")
def _async_1(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        article = client.post("/articles", params={"title": "hello"})
        assert article.status_code == 201
        assert article.json()["created_at"]
        assert client.post("/articles", params={"title": "hello"}).status_code == 409
        draft = client.post("/articles/draft", params={"title": "draft"})
        assert draft.status_code == 201
        assert draft.json()["title"] == "draft"
        viewed = client.post(f"/articles/{article.json()['id']}/views")
        assert viewed.json() == {"views": 1}
        assert client.post("/articles/999999/views").status_code == 404
    assert count(backend, "articles") == 2
    assert count(backend, "articles", "WHERE views = 1") == 1
    assert module.STATS == {"views": 1}  # the background task's own transaction


@check("docs_src/async_sessions/tutorial002.py")
def _async_2(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        for value in (3, 4):
            assert client.post("/readings", params={"sensor": "t", "value": value}).is_success
        assert client.get("/sensors").json() == {"count": 2, "total": 7}
        with pytest.raises(ConcurrentSessionUseError, match="one task at a time"):
            client.get("/sensors/wrong")
    assert count(backend, "readings") == 2


# -- configuration ------------------------------------------------------------------------


@check("docs_src/configuration/tutorial001.py")
def _configuration_1(module: ModuleType, backend: Backend) -> None:
    pool = module.db.engine.pool
    assert (pool.size(), pool.timeout()) == (10, 10)
    with module.db.transaction() as session:
        assert session.scalar(text("SELECT 1")) == 1


@check("docs_src/configuration/tutorial002.py", env={"APP_DB_URL": "{url}"})
def _configuration_2(module: ModuleType, backend: Backend) -> None:
    from sqlmodel import Session as SQLModelSession

    with module.reports_db.transaction() as session:
        assert isinstance(session, SQLModelSession)
        assert session.scalar(text("SELECT 1")) == 1
    module.reports_db.dispose()
    assert module.db.url == backend.url


@check("docs_src/operations/lifespans001.py", env={"ORDERS_DATABASE_URL": "{url}"})
def _operations_lifespans(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        assert module.db.pool_status()["sync"].checked_out == 0  # checked at startup
        assert module.orders_db.pool_status()["sync"].checked_out == 0
        assert client.get("/counts").json() == [1, 2]
    assert module.db.pool_status() == {}  # disposed at shutdown
    assert module.orders_db.pool_status() == {}


@check("docs_src/configuration/tutorial003.py")
def _configuration_3(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app):
        assert module.EVENTS == ["started, database answers 1"]
    assert module.EVENTS[-1] == "stopped, engines disposed"


@check("docs_src/configuration/tutorial004.py")
def _configuration_4(module: ModuleType, backend: Backend) -> None:
    pool = module.engine.pool
    with TestClient(module.app) as client:
        assert client.post("/jobs", params={"name": "nightly"}).status_code == 201
    assert count(backend, "jobs") == 1
    assert module.engine.pool is pool  # the shutdown left the app's engine alone...
    assert module.count_jobs() == 1  # ...and the CLI code keeps using it
    assert pool.checkedout() == 0


@check("docs_src/migrating/inside_endpoints.py")
def _migrating_inside_endpoints(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app, raise_server_exceptions=False) as client:
        created = client.post("/heroes/", params={"name": "Deadpond"})
        assert created.status_code == 200
        assert created.json()["name"] == "Deadpond"
        unit = client.post("/heroes/unit", params={"name": "Rusty-Man"})
        assert (unit.status_code, unit.json()["name"]) == (200, "Rusty-Man")
        assert count(backend, "inside_heroes") == 2
        trap = client.post("/heroes/detached", params={"name": "Spider-Boy"})
        assert trap.status_code == 500  # what the docs warn about really happens
    assert count(backend, "inside_heroes") == 3  # (its row was committed before the failure)


@check("docs_src/migrating/startup_events.py")
def _migrating_startup_events(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app):  # no DBSessionWarning (an error under our filterwarnings)
        assert count(backend, "startup_flags") == 0  # the table exists: the startup code ran


# -- pitfalls -----------------------------------------------------------------------------


@check("docs_src/pitfalls/commit_after_response_handwritten.py")
def _pitfall_handwritten(module: ModuleType, backend: Backend) -> None:
    module.Base.metadata.create_all(module.engine)
    with TestClient(module.app, raise_server_exceptions=False) as client:
        assert client.post("/coupons", params={"code": "SPRING"}).status_code == 201
        duplicate = client.post("/coupons", params={"code": "SPRING"})
    assert duplicate.status_code == 201  # the trap: the client was told it worked...
    assert count(backend, "coupons") == 1  # ...and the commit failed after the response


@check("docs_src/pitfalls/commit_after_response.py")
def _pitfall_fixed(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app, raise_server_exceptions=False) as client:
        assert client.post("/coupons", params={"code": "SPRING"}).status_code == 201
        duplicate = client.post("/coupons", params={"code": "SPRING"})
    assert duplicate.status_code == 500  # the failed commit reaches the client
    assert count(backend, "coupons") == 1
    assert module.db.engine.pool.checkedout() == 0


@check("docs_src/pitfalls/finished_session.py")
def _pitfall_finished_session(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        assert client.post("/visits", params={"page": "/"}).status_code == 202
    [error] = module.ERRORS
    assert isinstance(error, SessionFinishedError)
    assert "db.transaction()" in str(error)
    assert count(backend, "visits") == 1  # the request's own work was committed


@check("docs_src/pitfalls/swallowed_failure.py")
def _pitfall_swallowed(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client, pytest.raises(UnexpectedRollbackError):
        client.post("/bookings", params={"guest": "ada"})
    with TestClient(module.app, raise_server_exceptions=False) as client:
        assert client.post("/bookings", params={"guest": "ada"}).status_code == 500
        assert count(backend, "bookings") == 0  # nothing half-written was committed
        best_effort = client.post("/bookings/best-effort", params={"guest": "bob"})
        assert best_effort.status_code == 201
    assert count(backend, "bookings") == 1
    assert count(backend, "booking_extras") == 0


# -- migrating ----------------------------------------------------------------------------


@check("docs_src/migrating/before.py")
def _migrating_before(module: ModuleType, backend: Backend) -> None:
    module.Base.metadata.create_all(module.engine)
    with TestClient(module.app) as client:
        assert client.post("/users", params={"email": "ada@example.org"}).status_code == 201
        assert client.post("/users", params={"email": "ada@example.org"}).status_code == 409
    assert count(backend, "users") == 1


@check("docs_src/migrating/after.py")
def _migrating_after(module: ModuleType, backend: Backend) -> None:
    module.Base.metadata.create_all(module.db.engine)
    with TestClient(module.app) as client:
        created = client.post("/users", params={"email": "ada@example.org"})
        assert created.status_code == 201
        assert isinstance(created.json()["id"], int)
        assert client.post("/users", params={"email": "ada@example.org"}).status_code == 409
    assert count(backend, "users") == 1


# -- examples -----------------------------------------------------------------------------


@check("examples/async_postgres/app.py", backends={"postgresql"}, async_url=True)
def _async_postgres(module: ModuleType, backend: Backend) -> None:
    assert module.db.async_url.drivername == "postgresql+asyncpg"
    with TestClient(module.app) as client:
        created = client.post("/lists", params={"name": "groceries"})
        assert created.status_code == 201
        list_id = created.json()["id"]
        assert client.post("/lists", params={"name": "groceries"}).status_code == 409
        added = client.post(f"/lists/{list_id}/todos", json=[{"title": "milk"}, {"title": "tea"}])
        assert (added.status_code, added.json()) == (201, {"added": 2})
        refused = client.post(f"/lists/{list_id}/todos", json=[{"title": "x"}, {"title": " "}])
        assert refused.status_code == 422
        assert client.post("/lists/999999/todos", json=[{"title": "x"}]).status_code == 404
        todos = client.get(f"/lists/{list_id}/todos").json()
        done = client.post(f"/todos/{todos[0]['id']}/done")
        assert (done.status_code, done.json()["done"]) == (200, True)
    assert count(backend, "todos") == 2  # the refused batch left nothing behind
    assert count(backend, "todos", "WHERE done") == 1
    digest = f"list {list_id}: 2 open"
    assert [digest] == module.DIGESTS


# -- operating in production: observability ------------------------------------------------


@check("docs_src/operations/observability001.py")
def _observability_1(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        response = client.get("/products/3")
    assert response.status_code == 200
    expected = 3 if backend.name == "sqlite" else 2  # SQLite: the library's BEGIN too
    assert re.fullmatch(
        rf'db;dur=\d+\.\d;desc="shop: {expected} queries"', response.headers["server-timing"]
    )


@check("docs_src/operations/observability002.py")
def _observability_2(module: ModuleType, backend: Backend) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    try:
        with TestClient(module.app) as client:
            assert client.get("/products/3").status_code == 200
            metrics = client.get("/metrics/").text
    finally:
        SQLAlchemyInstrumentor().uninstrument()  # the example turned it on for the process
    pattern = r'fastapi_dbsession_pool_connections\{database="shop",side="sync",state="idle"\} 1.0'
    assert re.search(pattern, metrics), metrics
    assert 'fastapi_dbsession_query_duration_seconds_count{database="shop",side="sync"}' in metrics


# -- the tests ----------------------------------------------------------------------------


# -- guarantees ---------------------------------------------------------------------------


@check("docs_src/guarantees/idempotency.py")
def _guarantees_idempotency(module: ModuleType, backend: Backend) -> None:
    with TestClient(module.app) as client:
        headers = {"Idempotency-Key": "order-17"}
        first = client.post("/payments", params={"amount": 30}, headers=headers)
        assert first.status_code == 201
        again = client.post("/payments", params={"amount": 30}, headers=headers)  # a retry
        assert (again.status_code, again.json()) == (200, first.json())
        assert count(backend, "payments") == 1
        other = client.post("/payments", params={"amount": 5}, headers={"Idempotency-Key": "x"})
        assert other.status_code == 201
        assert count(backend, "payments") == 2
        handler = module.app.exception_handlers[module.CommitOutcomeUnknownError]
        assert handler is module.commit_outcome_unknown


@pytest.mark.parametrize(("path", "backend"), list(_cases()), indirect=["backend"])
def test_documented_file_runs(path: str, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    url = backend.async_url if path in ASYNC_ONLY else backend.url
    rendered = url.render_as_string(hide_password=False)
    for name, value in ENVIRONMENT[path].items():
        monkeypatch.setenv(name, value.format(url=rendered))
    module = load(ROOT / path, monkeypatch, rendered)
    try:
        CHECKS[path](module, backend)
    finally:
        drop_tables(module)


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=True,
)
@pytest.mark.timeout(360)  # a whole pytest subprocess, itself bounded at 300 s
def test_testing_example_passes(backend: Backend) -> None:
    """examples/testing is a user's test suite: run it as one, with its own pytest."""
    run_suite(backend, ROOT, ["-p", "no:cacheprovider", "examples/testing"], passed=5)


def run_suite(backend: Backend, cwd: Path, arguments: list[str], *, passed: int) -> None:
    """Run a user's test suite with its own pytest, on ``backend``; all ``passed`` must pass."""
    env = {**os.environ, "DATABASE_URL": url_of(backend)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"\b{passed} passed\b", result.stdout), result.stdout


def test_sqlmodel_example_passes(backend: Backend) -> None:
    """examples/sqlmodel_heroes: SQLModel's heroes and teams, and their tests, three ways."""
    run_suite(backend, EXAMPLES / "sqlmodel_heroes", [], passed=6)


def test_every_documented_file_is_run() -> None:
    """Each docs_src file has a check, and each file docs/ includes exists and is run."""
    docs_src_files = {str(path.relative_to(ROOT)) for path in DOCS_SRC.rglob("*.py")}
    assert docs_src_files <= set(CHECKS), docs_src_files - set(CHECKS)

    included = set()
    for page in DOCS.rglob("*.md"):
        for match in re.finditer(r'--8<-- "([^"]+?)(?::[\w-]+)?"', page.read_text()):
            included.add(match.group(1))
    run_elsewhere = {  # run by tests/test_examples.py, or as a pytest session above
        "CHANGELOG.md",
        "examples/quickstart/app.py",
        "examples/production/app.py",
        "examples/testing/app.py",
        "examples/testing/conftest.py",
        "examples/testing/pytest.ini",
        "examples/testing/test_app.py",
        "examples/sqlmodel_heroes/app.py",
        "examples/sqlmodel_heroes/conftest.py",
        "examples/sqlmodel_heroes/pytest.ini",
        "examples/sqlmodel_heroes/test_app.py",
    }
    for path in included:
        assert (ROOT / path).is_file(), f"docs include {path}, which does not exist"
        assert path in CHECKS or path in run_elsewhere, f"docs include {path}, which no test runs"


def test_tests_named_by_the_docs_exist() -> None:
    """The pitfalls and guides name the tests that prove them: those tests must exist."""
    named = set()
    for page in DOCS.rglob("*.md"):
        named.update(re.findall(r"(tests/[\w/]+\.py)::(\w+)", page.read_text()))
    assert named, "the docs name no test"
    for path, name in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), f"{path}::{name}"
