"""@transactional inside requests: joining, threads, hooks before the response, retries."""

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import (
    CURRENT_SESSION,
    ConfigurationError,
    DatabaseSessionManager,
    NoActiveTransactionError,
    Propagation,
    UnexpectedRollbackError,
    transactional,
)
from tests.conftest import SERVERS, Backend
from tests.models import Item

try:
    import httpx2 as httpx
except ImportError:  # older Starlette pairs with httpx
    import httpx  # type: ignore[no-redef]


class Boom(Exception):
    pass


RETRYABLE_FAILURE = {  # a real serialization failure / deadlock, raised by the server itself
    "postgresql": "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
    "mariadb": "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'injected'",
}


@pytest.fixture
def db(backend: Backend) -> DatabaseSessionManager:
    return DatabaseSessionManager(backend.url, async_url=backend.async_url)


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def app(db: DatabaseSessionManager, backend: Backend, events: list[str]) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    state: dict[str, Any] = {"attempts": 0}
    app.state.shared = state

    @app.middleware("http")
    async def record_response_start(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        events.append("response")
        return response

    @transactional
    def add_item(session: Session, name: str) -> Session:
        session.add(Item(name=name))
        session.flush()
        return session

    @transactional
    async def aadd_item(session: AsyncSession, name: str) -> AsyncSession:
        session.add(Item(name=name))
        await session.flush()
        return session

    @transactional
    def fail(session: Session) -> None:
        session.add(Item(name="doomed"))
        session.flush()
        raise Boom

    @transactional
    async def afail(session: AsyncSession) -> None:
        session.add(Item(name="doomed"))
        await session.flush()
        raise Boom

    @app.post("/sync/service", status_code=201)
    def service(session: Session = Depends(db.session)) -> dict[str, object]:
        joined = add_item(name="via-service")  # no session passed: the request's is used
        db.on_commit(lambda: events.append(f"hook:{_count(backend)}"))

        async def on_the_loop() -> None:  # an async callback from a sync endpoint
            events.append(f"async-hook-on-loop:{_on_event_loop()}")

        db.on_commit(on_the_loop)
        return {"same": joined is session, "thread": threading.current_thread().name}

    @app.post("/async/service", status_code=201)
    async def aservice(session: AsyncSession = Depends(db.async_session)) -> dict[str, object]:
        joined = await aadd_item(name="via-service")
        db.on_commit(lambda: events.append(f"hook:{_count(backend)}"))

        async def on_the_loop() -> None:
            events.append(f"async-hook-on-loop:{_on_event_loop()}")

        db.on_commit(on_the_loop)
        return {"same": joined is session, "thread": threading.current_thread().name}

    @app.post("/sync/swallowed")
    def swallowed(session: Session = Depends(db.session)) -> None:
        add_item(name="outer")
        with contextlib.suppress(Boom):
            fail()

    @app.post("/async/swallowed")
    async def aswallowed(session: AsyncSession = Depends(db.async_session)) -> None:
        await aadd_item(name="outer")
        with contextlib.suppress(Boom):
            await afail()

    @app.post("/sync/decorated", status_code=201)
    @transactional
    def decorated(name: str, session: Session = Depends(db.session)) -> dict[str, str]:
        session.add(Item(name=name))
        return {"thread": threading.current_thread().name}

    @app.post("/async/decorated", status_code=201)
    @transactional
    async def adecorated(
        name: str, session: AsyncSession = Depends(db.async_session)
    ) -> dict[str, str]:
        session.add(Item(name=name))
        return {"thread": threading.current_thread().name}

    @app.post("/sync/retried", status_code=201)
    @transactional(retries=3)
    def retried(session: Session = Depends(db.session)) -> dict[str, int]:
        state["attempts"] += 1
        session.add(Item(name=f"attempt-{state['attempts']}"))
        session.flush()
        db.on_commit(lambda: events.append(f"commit-of-attempt-{state['attempts']}"))
        if state["attempts"] == 1:
            session.execute(text(RETRYABLE_FAILURE[backend.name]))
        return {"attempts": state["attempts"]}

    @app.post("/async/retried", status_code=201)
    @transactional(retries=3)
    async def aretried(session: AsyncSession = Depends(db.async_session)) -> dict[str, int]:
        state["attempts"] += 1
        session.add(Item(name=f"attempt-{state['attempts']}"))
        await session.flush()
        db.on_commit(lambda: events.append(f"commit-of-attempt-{state['attempts']}"))
        if state["attempts"] == 1:
            await session.execute(text(RETRYABLE_FAILURE[backend.name]))
        return {"attempts": state["attempts"]}

    @app.post("/sync/nested-retry")
    def nested_retry(session: Session = Depends(db.session)) -> None:
        session.execute(text("SELECT 1"))
        db.transactional(retries=2)(lambda session: None)()

    @app.get("/async/whoami")
    async def whoami(session: AsyncSession = Depends(db.async_session)) -> dict[str, bool]:
        @transactional(propagation=Propagation.MANDATORY)
        async def current(session: AsyncSession) -> AsyncSession:
            await asyncio.sleep(0.001)
            return session

        mine = [await current() for _ in range(3)]
        return {"same": all(found is session for found in mine)}

    @app.get("/sync/whoami")
    def swhoami(session: Session = Depends(db.session)) -> dict[str, bool]:
        @transactional(propagation=Propagation.MANDATORY)
        def current(session: Session) -> Session:
            return session

        return {"same": current() is session and db.current_session() is session}

    return app


def _count(backend: Backend) -> int:
    return backend.count()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def test_service_joins_the_request_session_and_hooks_run_before_the_response(
    client: TestClient, backend: Backend, side: str, events: list[str]
) -> None:
    response = client.post(f"/{side}/service")

    assert response.status_code == 201
    assert response.json()["same"] is True
    assert backend.names() == ["via-service"]
    # after the commit, before the response; the async callback awaited on the event loop
    assert events == ["hook:1", "async-hook-on-loop:True", "response"]


def test_sync_endpoints_run_in_a_worker_thread_async_ones_on_the_loop(
    client: TestClient, backend: Backend
) -> None:
    sync_thread = client.post("/sync/decorated", params={"name": "a"}).json()["thread"]
    async_thread = client.post("/async/decorated", params={"name": "b"}).json()["thread"]

    assert sync_thread != async_thread
    assert "worker" in sync_thread.lower() or sync_thread.startswith("AnyIO")
    assert backend.names() == ["a", "b"]


def test_swallowed_failure_in_a_request_is_an_error_not_a_partial_commit(
    app: FastAPI, backend: Backend, side: str
) -> None:
    with TestClient(app) as client, pytest.raises(UnexpectedRollbackError):
        client.post(f"/{side}/swallowed")
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post(f"/{side}/swallowed").status_code == 500
    assert backend.count() == 0


# real SQLSTATEs / error numbers: the servers only
@pytest.mark.parametrize("backend", [SERVERS["postgresql"], SERVERS["mariadb"]], indirect=True)
def test_retries_rerun_the_endpoint_on_a_real_serialization_failure(
    app: FastAPI, backend: Backend, side: str, events: list[str]
) -> None:
    with TestClient(app) as client:
        response = client.post(f"/{side}/retried")

    assert response.status_code == 201
    assert response.json() == {"attempts": 2}
    assert backend.names() == ["attempt-2"]  # the failed attempt left nothing behind
    assert events == ["commit-of-attempt-2", "response"]  # its hook never ran


def test_retries_inside_a_running_transaction_are_refused(client: TestClient) -> None:
    with pytest.raises(ConfigurationError, match="outermost"):
        client.post("/sync/nested-retry")


def test_decorator_keeps_kind_and_signature(db: DatabaseSessionManager) -> None:
    def plain(session: Session, amount: int, *, note: str = "") -> int:
        return amount

    async def coroutine(session: AsyncSession, amount: int) -> int:
        return amount

    wrapped = transactional(plain)
    awrapped = db.transactional(propagation=Propagation.NESTED)(coroutine)

    assert not inspect.iscoroutinefunction(wrapped)
    assert inspect.iscoroutinefunction(awrapped)
    assert inspect.signature(wrapped) == inspect.signature(plain)
    assert inspect.signature(awrapped) == inspect.signature(coroutine)
    assert wrapped.__wrapped__ is plain  # type: ignore[attr-defined]
    assert wrapped.__name__ == "plain"


def test_wrong_kind_of_session_is_a_clear_error(db: DatabaseSessionManager) -> None:
    @transactional
    def sync_work(session: Session) -> None:
        pass

    @transactional
    async def async_work(session: AsyncSession) -> None:
        pass

    with pytest.raises(ConfigurationError, match="sync function but was given an AsyncSession"):
        sync_work(AsyncSession(db.async_engine))
    with pytest.raises(ConfigurationError, match="async function but was given a sync Session"):
        asyncio.run(async_work(Session(db.engine)))


def test_generators_cannot_be_decorated() -> None:
    with pytest.raises(ConfigurationError, match="generator"):

        @transactional
        def rows(session: Session) -> Iterator[int]:
            yield 1


def test_concurrent_requests_never_see_each_others_session(app: FastAPI, side: str) -> None:
    async def load() -> list[bool]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            responses = await asyncio.gather(*(client.get(f"/{side}/whoami") for _ in range(50)))
        return [response.json()["same"] for response in responses]

    assert asyncio.run(load()) == [True] * 50


@pytest.mark.parametrize("backend", [SERVERS["postgresql"]], indirect=True)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_retries_recognise_serialization_failures_from_each_sync_driver(
    backend: Backend, driver: str
) -> None:
    db = DatabaseSessionManager(backend.url.set(drivername=f"postgresql+{driver}"))
    attempts: list[int] = []

    @db.transactional(retries=2)
    def unit(session: Session) -> None:
        attempts.append(len(attempts) + 1)
        session.add(Item(name=f"{driver}-{len(attempts)}"))
        session.flush()
        if len(attempts) == 1:
            session.execute(text(RETRYABLE_FAILURE["postgresql"]))

    unit()
    db.dispose()
    assert attempts == [1, 2]
    assert backend.names() == [f"{driver}-2"]


class Session2:  # not SQLAlchemy's, whatever its name
    pass


def _received(db: DatabaseSessionManager, func: Any) -> list[str]:
    """The parameters in which ``@db.transactional`` passed ``func`` a session."""
    call = db.transactional(func)
    args = (1,) if "x" in inspect.signature(func).parameters else ()
    result = asyncio.run(call(*args)) if inspect.iscoroutinefunction(func) else call(*args)
    return [name for name, value in result.items() if isinstance(value, Session | AsyncSession)]


def test_the_session_parameter_is_found_by_name_or_by_annotation(
    db: DatabaseSessionManager,
) -> None:
    from typing import Annotated

    def by_name(x: int, session: object = None) -> dict[str, object]:
        return locals()

    def by_class(x: int, db_session: Session = CURRENT_SESSION) -> dict[str, object]:
        return locals()

    async def by_async_class(s: AsyncSession = CURRENT_SESSION) -> dict[str, object]:
        return locals()

    async def by_string(x: int, s: "AsyncSession" = CURRENT_SESSION) -> dict[str, object]:
        return locals()

    def by_annotated(
        s: Annotated[Session, Depends(db.session)] = CURRENT_SESSION,
    ) -> dict[str, object]:
        return locals()

    def by_optional(s: Session | None = None) -> dict[str, object]:
        return locals()

    def keyword_only(*, s: Session = CURRENT_SESSION) -> dict[str, object]:
        return locals()

    def none(x: int, other: Session2 | None = None) -> dict[str, object]:
        return locals()

    assert _received(db, by_name) == ["session"]
    assert _received(db, by_class) == ["db_session"]
    assert _received(db, by_async_class) == ["s"]
    assert _received(db, by_string) == ["s"]
    assert _received(db, by_annotated) == ["s"]
    assert _received(db, by_optional) == ["s"]
    assert _received(db, keyword_only) == ["s"]
    assert _received(db, none) == []
    db.dispose()


def test_a_positional_only_session_is_refused() -> None:
    def positional(session: Session, /) -> None: ...

    with pytest.raises(ConfigurationError, match="positional-only"):
        transactional(positional)


def test_a_session_found_by_annotation_is_passed_in(
    db: DatabaseSessionManager, backend: Backend
) -> None:
    @db.transactional
    def add(name: str, db_session: Session = CURRENT_SESSION) -> None:
        db_session.add(Item(name=name))

    add("by-annotation")
    db.dispose()
    assert backend.names() == ["by-annotation"]


def test_hooks_in_a_unit_on_a_callers_own_session_are_refused(
    db: DatabaseSessionManager,
) -> None:
    @db.transactional
    def work(session: Session) -> None:
        db.on_commit(lambda: None)

    @transactional
    def bare_work(session: Session) -> None:
        db.on_commit(lambda: None)

    own = Session(db.engine)  # the caller's own session: the caller commits it
    with pytest.raises(NoActiveTransactionError, match="passed in by the caller"):
        work(own)
    with pytest.raises(NoActiveTransactionError, match="none is active"):
        bare_work(own)
    own.close()
    db.dispose()
