"""Health: pings with their own deadline, the liveness/readiness router, the startup retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from fastapi_dbsession import DatabaseSessionManager, DatabaseUnavailableError
from tests._servers import free_port
from tests.conftest import SERVERS, Backend

SENTINEL = "s3cret-Pa55word"

# A driver of each family, pointed at a listener that accepts connections and never answers.
SILENT_URLS = {
    "psycopg": "postgresql+psycopg://app:{pw}@127.0.0.1:{port}/app",
    "asyncpg": "postgresql+asyncpg://app:{pw}@127.0.0.1:{port}/app",
    "pymysql": "mysql+pymysql://app:{pw}@127.0.0.1:{port}/app",
    "aiomysql": "mysql+aiomysql://app:{pw}@127.0.0.1:{port}/app",
}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback TCP listener that accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    listener.close()


def _silent_manager(driver: str, port: int) -> DatabaseSessionManager:
    url = SILENT_URLS[driver].format(pw=SENTINEL, port=port)
    return DatabaseSessionManager(url, startup_retries=0, startup_timeout=0.5)


@pytest.mark.parametrize("driver", ["psycopg", "pymysql"])
def test_ping_of_a_database_that_never_answers_is_unavailable_within_the_deadline(
    driver: str, silent_port: int
) -> None:
    db = _silent_manager(driver, silent_port)
    started = time.monotonic()
    result = db.ping(timeout=0.5)
    assert time.monotonic() - started < 0.5 + 0.5
    assert result.status == "unavailable"
    assert not result.ok
    assert result.error is not None
    assert "0.5s" in result.error
    # the first ping is still stuck in the driver: the next one answers at once, no new thread
    started = time.monotonic()
    again = db.ping(timeout=5)
    assert time.monotonic() - started < 0.5
    assert again.status == "unavailable"
    assert "previous ping" in (again.error or "")


@pytest.mark.parametrize("driver", ["asyncpg", "aiomysql"])
def test_async_ping_of_a_database_that_never_answers_is_unavailable_within_the_deadline(
    driver: str, silent_port: int
) -> None:
    db = _silent_manager(driver, silent_port)

    async def scenario() -> None:
        started = time.monotonic()
        result = await db.async_ping(timeout=0.5)
        assert time.monotonic() - started < 0.5 + 0.5
        assert result.status == "unavailable"
        assert "0.5s" in (result.error or "")

    asyncio.run(scenario())


def test_ping_answers_ok_with_its_latency(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    result = db.ping(timeout=5)
    assert result.ok, result.error
    assert result.status == "ok"
    assert 0 < result.latency < 5
    assert result.error is None

    async def scenario() -> None:
        result = await db.async_ping(timeout=5)
        assert result.ok, result.error
        await db.async_dispose()

    asyncio.run(scenario())
    if backend.name != "sqlite":  # pings use connections of their own, not the pool's
        assert "sync" not in db.pool_status()
    db.dispose()


def test_ready_is_200_with_a_small_body(backend: Backend) -> None:
    db = DatabaseSessionManager(backend.url, async_url=backend.async_url)
    app = FastAPI(lifespan=db.lifespan)
    app.include_router(db.health_router())
    with TestClient(app) as client:
        ready = client.get("/health/ready")
        live = client.get("/health/live")
    assert ready.status_code == 200
    body = ready.json()
    assert set(body) == {"status", "latency_ms"}
    assert body["status"] == "ok"
    assert ready.headers["cache-control"] == "no-store"
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_ready_is_503_when_the_database_never_answers_and_live_stays_200(
    driver: str, silent_port: int
) -> None:
    db = _silent_manager(driver, silent_port)
    app = FastAPI()  # no lifespan: the startup check would refuse to start
    app.include_router(db.health_router(prefix="/probe", timeout=0.5))
    with TestClient(app) as client:
        started = time.monotonic()
        ready = client.get("/probe/ready")
        elapsed = time.monotonic() - started
        live = client.get("/probe/live")
    assert ready.status_code == 503
    assert elapsed < 0.5 + 0.5
    assert set(ready.json()) == {"status", "latency_ms"}
    assert ready.json()["status"] == "unavailable"
    for secret in (SENTINEL, "127.0.0.1", str(silent_port), "SELECT"):
        assert secret not in ready.text
    assert live.status_code == 200


def test_startup_gives_up_after_its_retries_naming_host_and_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_dbsession")
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://app:{SENTINEL}@127.0.0.1:{port}/app"
    db = DatabaseSessionManager(url, startup_retries=2, startup_timeout=2)
    started = time.monotonic()
    with (
        pytest.raises(DatabaseUnavailableError) as caught,
        TestClient(FastAPI(lifespan=db.lifespan)),
    ):
        pass
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"Cannot reach the database at 127.0.0.1:{port} " in message
    assert "after 3 attempt(s)" in message
    assert "app:***@" in message
    assert 0.5 + 1.0 <= elapsed < 10  # backoff 0.5 s, then 1 s
    retries = [
        r.getMessage() for r in caplog.records if "not reachable at startup" in r.getMessage()
    ]
    assert len(retries) == 2
    assert "(attempt 1 of 3)" in retries[0]
    assert "retrying in 0.5s" in retries[0]
    for shown in [message, *retries]:
        assert SENTINEL not in shown


def test_startup_deadline_holds_against_a_database_that_never_answers(silent_port: int) -> None:
    db = _silent_manager("psycopg", silent_port)
    started = time.monotonic()
    with (
        pytest.raises(DatabaseUnavailableError, match="no answer within 0.5s"),
        TestClient(FastAPI(lifespan=db.lifespan)),
    ):
        pass
    assert time.monotonic() - started < 0.5 + 1


class _LateDatabase:
    """A TCP forwarder to a real server that starts listening only after ``delay`` seconds."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.port = free_port()
        self._target = target
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        timer = threading.Timer(delay, self._listen)
        timer.daemon = True
        timer.start()
        self._timer = timer

    def _listen(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client = listener.accept()[0]
            except TimeoutError:
                continue
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                thread = threading.Thread(target=_pump, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)
        listener.close()

    def close(self) -> None:
        self._timer.cancel()
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for end in self._sockets:
            end.close()
        self._timer.join(5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("backend", [SERVERS["postgresql"]], indirect=True)
def test_startup_waits_for_a_database_that_comes_up_after_the_app(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_dbsession")
    late = _LateDatabase((backend.url.host or "127.0.0.1", backend.url.port or 5432), delay=0.8)
    try:
        url = make_url(backend.url).set(host="127.0.0.1", port=late.port)
        db = DatabaseSessionManager(url, startup_retries=5, startup_timeout=2)
        with TestClient(FastAPI(lifespan=db.lifespan)):
            assert db.ping(timeout=5).ok
        retries = [r for r in caplog.records if "not reachable at startup" in r.getMessage()]
        assert 1 <= len(retries) <= 3
        assert all(record.levelno == logging.WARNING for record in retries)
    finally:
        late.close()
