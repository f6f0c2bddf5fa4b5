"""The request session: commit before the response, roll back on failure, always close."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from fastapi_dbsession import (
    CommitOutcomeUnknownError,
    ConcurrentSessionUseError,
    DatabaseSessionManager,
    SessionFinishedError,
    dependencies,
)
from tests.app import build_app
from tests.conftest import Backend, PoolWatch


@pytest.fixture(params=["function-stack", "nested"])
def db(
    backend: Backend, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> DatabaseSessionManager:
    """A manager whose request dependencies use one of the two ways of hooking into FastAPI.

    "function-stack" (every supported FastAPI) pushes the ending onto FastAPI's function-scoped
    exit stack; "nested" is the fallback for a FastAPI that would no longer expose that stack:
    a ``scope="function"`` yield dependency. Every test here runs against both.
    """
    if request.param == "nested":
        monkeypatch.setattr(dependencies, "FUNCTION_STACK_KEY", None)
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    _watches[id(db)] = {"sync": PoolWatch(db.engine), "async": PoolWatch(db.async_engine)}
    return db


_watches: dict[int, dict[str, PoolWatch]] = {}


@pytest.fixture
def app(db: DatabaseSessionManager) -> FastAPI:
    return build_app(db)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def checked_out(db: DatabaseSessionManager, side: str) -> int:
    """Connections the side's pool has handed out and not got back."""
    return _watches[id(db)][side].out


def test_request_sessions_use_fastapis_function_stack(backend: Backend) -> None:
    """On the FastAPI versions we test (newest and the oldest we declare), ``db.session`` is one
    plain dependency ending on FastAPI's function-scoped exit stack, not the slower fallback."""
    import inspect

    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    for dependency in (db.session, db.async_session):
        assert list(inspect.signature(dependency).parameters) == ["connection", "response"]


def _http_scope(method: str, path: str) -> dict[str, object]:
    """An ASGI HTTP scope, for driving the app without a client in between."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
        "root_path": "",
    }


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_row_is_committed_before_the_first_byte_of_the_response(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, side: str, anyio_backend: str
) -> None:
    """The order, not just the outcome: when the app hands the server the response's first
    message, the row is already visible to another connection. ``send`` holds every message
    until we have looked, so a commit that ran after the response started (a yield dependency
    torn down after the response, FastAPI's default before 0.106) is caught here, although the
    client would see the same 201 and the same row once the request is over."""
    sent: list[tuple[str, object, list[str]]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b'{"name": "ada"}', "more_body": False}

    async def send(message: dict[str, object]) -> None:
        committed = await anyio.to_thread.run_sync(backend.names)  # another connection
        sent.append((str(message["type"]), message.get("status"), committed))

    with anyio.fail_after(30):
        await app(_http_scope("POST", f"/{side}/items"), receive, send)

    assert sent == [
        ("http.response.start", 201, ["ada"]),  # committed before the status line went out
        ("http.response.body", None, ["ada"]),
    ]
    assert checked_out(db, side) == 0
    await db.async_dispose()
    db.dispose()


def test_success_commits_and_serializes_server_defaults(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items", json={"name": "ada"})

    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "ada"
    assert isinstance(body["id"], int)  # server-generated id serialized
    assert body["created_at"]  # server default loaded, no MissingGreenlet
    assert backend.names() == ["ada"]
    assert checked_out(db, side) == 0


@pytest.mark.parametrize("status", [400, 409, 500])
def test_http_exception_rolls_back(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str, status: int
) -> None:
    response = client.post(f"/{side}/items", json={"name": "ada", "raise_status": status})

    assert response.status_code == status
    assert backend.count() == 0
    assert checked_out(db, side) == 0


def test_error_status_on_injected_response_rolls_back(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items", json={"name": "ada", "status": 409})

    assert response.status_code == 409
    assert backend.count() == 0
    assert checked_out(db, side) == 0


def test_success_status_on_injected_response_commits(
    client: TestClient, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items", json={"name": "ada", "status": 202})

    assert response.status_code == 202
    assert backend.names() == ["ada"]


def test_commit_failure_returns_500_not_2xx(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/{side}/items/commit-fails")

        assert response.status_code == 500
        assert "never see this" not in response.text
        assert backend.count() == 0
        assert backend.count("tickets") == 0
        assert checked_out(db, side) == 0


def test_commit_failure_reaches_the_apps_exception_handler(
    app: FastAPI, backend: Backend, side: str
) -> None:
    @app.exception_handler(DBAPIError)
    @app.exception_handler(CommitOutcomeUnknownError)  # MariaDB's case: the connection is killed
    async def conflict(request: object, exc: Exception) -> object:
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": "could not save"}, status_code=503)

    with TestClient(app) as client:
        response = client.post(f"/{side}/items/commit-fails")

    assert response.status_code == 503
    assert response.json() == {"detail": "could not save"}
    assert backend.count() == 0


def test_commit_failure_raises_the_database_error(
    app: FastAPI, backend: Backend, side: str
) -> None:
    # MariaDB has no deferred constraint: its commit fails by a killed connection, whose
    # outcome is unknown (docs/guarantees.md); the driver's error is the cause
    expected = CommitOutcomeUnknownError if backend.name == "mariadb" else IntegrityError
    with TestClient(app) as client, pytest.raises(expected) as raised:
        client.post(f"/{side}/items/commit-fails")
    if backend.name == "mariadb":
        assert isinstance(raised.value.__cause__, OperationalError)


def test_dependency_and_endpoint_share_one_session(
    client: TestClient, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items/shared")

    assert response.status_code == 201
    assert response.json() == {"same": True}
    assert backend.names() == ["audit", "endpoint"]


@pytest.mark.parametrize("failure", [("http", 403), ("error", 500)], ids=["http", "error"])
def test_dependency_that_wrote_then_raised_rolls_back(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, side: str, failure: tuple[str, int]
) -> None:
    """A dependency flushes an INSERT into the request session, then raises (HTTPException or
    any error): the INSERT is rolled back, the connection returned."""
    kind, status = failure
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/{side}/items/dependency-fails", params={"kind": kind})
        assert checked_out(db, side) == 0

    assert response.status_code == status
    assert backend.count() == 0


def test_request_validation_error_rolls_back_dependency_writes(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items/audit-then-invalid", json={"nom": "missing name"})

    assert response.status_code == 422
    assert backend.count() == 0
    assert checked_out(db, side) == 0


def test_response_validation_error_rolls_back(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/{side}/items/bad-response")
        assert checked_out(db, side) == 0

    assert response.status_code == 500
    assert backend.count() == 0


def test_request_that_never_touches_the_database_checks_out_nothing(
    client: TestClient, db: DatabaseSessionManager, side: str
) -> None:
    before = _watches[id(db)][side].checkouts  # the startup check connected once
    response = client.get(f"/{side}/untouched")

    assert response.json() == {"in_transaction": False}
    assert _watches[id(db)][side].checkouts == before


def test_returned_response_with_error_status_commits(
    client: TestClient, backend: Backend, side: str
) -> None:
    """A Response returned directly is invisible to dependencies: its 4xx commits (documented)."""
    response = client.post(f"/{side}/items/returned-response")

    assert response.status_code == 409
    assert backend.names() == ["returned"]


def test_manual_policy_never_commits_for_you(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    assert client.post(f"/{side}/items/manual", json={"name": "lost"}).status_code == 200
    assert client.post(f"/{side}/items/manual", json={"name": "commit-me"}).status_code == 200

    assert backend.names() == ["commit-me"]
    assert checked_out(db, side) == 0


def test_read_only_policy_always_rolls_back(
    client: TestClient, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items/read-only")

    assert response.json() == {"count": 1}
    assert backend.count() == 0


def test_manager_default_policy_applies_to_every_route(backend: Backend, side: str) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url, commit_policy="manual")
    with TestClient(build_app(db)) as client:
        assert client.post(f"/{side}/items", json={"name": "ada"}).status_code == 201
    assert backend.count() == 0


def test_background_task_cannot_use_the_finished_session(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    with TestClient(app) as client:
        response = client.post(f"/{side}/items/background")
        assert checked_out(db, side) == 0

    assert response.status_code == 202
    assert backend.names() == ["before-background"]
    [error] = app.state.background_errors
    assert isinstance(error, SessionFinishedError)
    assert "db.transaction()" in str(error)


def test_streaming_body_cannot_use_the_finished_session(
    app: FastAPI, db: DatabaseSessionManager, side: str
) -> None:
    with TestClient(app) as client:
        response = client.get(f"/{side}/items/stream")
        assert checked_out(db, side) == 0

    assert response.text == "start\nerror\n"
    [error] = app.state.stream_errors
    assert isinstance(error, SessionFinishedError)


def test_explicit_commit_in_endpoint_serializes_loaded_object(
    client: TestClient, backend: Backend, side: str
) -> None:
    response = client.post(f"/{side}/items/explicit-commit", json={"name": "ada"})

    assert response.status_code == 201
    assert response.json()["name"] == "ada"
    assert isinstance(response.json()["id"], int)
    assert backend.names() == ["ada"]


def test_async_session_shared_between_tasks_fails_clearly(
    client: TestClient, db: DatabaseSessionManager
) -> None:
    with pytest.raises(ConcurrentSessionUseError, match="one task at a time"):
        client.get("/async/misuse/gather")
    assert checked_out(db, "async") == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancelled_request_rolls_back_and_returns_connection(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, side: str, anyio_backend: str
) -> None:
    scope = _http_scope("POST", f"/{side}/items/slow")

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        raise AssertionError("a cancelled request sends nothing")

    async def wait_for_the_write() -> None:
        while checked_out(db, side) == 0:  # noqa: ASYNC110 - polls the pool, not an event
            await anyio.sleep(0.02)

    with anyio.move_on_after(10) as scope_timeout:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app, scope, receive, send)
            await wait_for_the_write()
            await anyio.sleep(0.2)
            tasks.cancel_scope.cancel()
    assert not scope_timeout.cancelled_caught

    try:
        # rolled back and closed by the library while the request was being cancelled: the
        # session is still referenced (app.state), so no garbage collection did it for us
        assert app.state.rolled_back == [side]
        assert checked_out(db, side) == 0
        assert backend.count() == 0
    finally:  # a regression leaves a transaction open: end it, or the next test waits on it
        for kept in app.state.kept_sessions:
            closed = kept.close()
            if closed is not None:
                await closed
        await db.async_dispose()
        db.dispose()


def test_dependency_override_replaces_the_session(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend
) -> None:
    """The seed's testing habit: app.dependency_overrides[db.session] = ..."""
    test_engine = backend.admin_engine()
    outer = test_engine.connect()
    transaction = outer.begin()
    from sqlalchemy.orm import Session

    test_session = Session(bind=outer, join_transaction_mode="create_savepoint")
    app.dependency_overrides[db.session] = lambda: test_session
    try:
        with TestClient(app) as client:
            assert client.post("/sync/items", json={"name": "ada"}).status_code == 201
            # visible inside the test's transaction, invisible to everyone else
            assert test_session.scalar(text("SELECT count(*) FROM items")) == 1
            assert backend.count() == 0
    finally:
        test_session.close()
        transaction.rollback()
        outer.close()
        test_engine.dispose()
    assert backend.count() == 0


def test_websocket_session_commits_when_the_handler_returns(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    with client.websocket_connect(f"/{side}/ws") as socket:
        socket.send_text("ada")
        assert socket.receive_text() == "saved"

    assert backend.names() == ["ada"]
    assert checked_out(db, side) == 0


def test_websocket_session_rolls_back_when_the_handler_fails(
    client: TestClient, db: DatabaseSessionManager, backend: Backend, side: str
) -> None:
    with (
        pytest.raises(RuntimeError, match="socket handler failed"),
        client.websocket_connect(f"/{side}/ws") as socket,
    ):
        socket.send_text("fail")
        assert socket.receive_text() == "saved"
        socket.receive_text()

    assert backend.count() == 0
    assert checked_out(db, side) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_dependency_override_replaces_the_session(
    app: FastAPI, db: DatabaseSessionManager, backend: Backend, anyio_backend: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older Starlette pairs with httpx
        import httpx  # type: ignore[no-redef]

    test_engine = create_async_engine(backend.async_url)
    async with test_engine.connect() as outer:
        transaction = await outer.begin()
        test_session = AsyncSession(bind=outer, join_transaction_mode="create_savepoint")
        app.dependency_overrides[db.async_session] = lambda: test_session
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/async/items", json={"name": "ada"})
        assert response.status_code == 201
        assert await test_session.scalar(text("SELECT count(*) FROM items")) == 1
        assert backend.count() == 0
        await test_session.close()
        await transaction.rollback()
    await test_engine.dispose()
    assert backend.count() == 0
