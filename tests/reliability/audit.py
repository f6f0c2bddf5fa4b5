"""The acknowledged-write audit: send keyed writes, kill backends, check every answer.

A client sends writes, each with its own key, to a real uvicorn serving
``tests/reliability/audit_app.py``, while a :class:`Killer` ends every backend of the app's
database (never another database's) at a fixed interval. :func:`audit` then compares each
answer with the table: a 2xx row must be present exactly once, an error's row absent; an
answer tagged ``commit outcome unknown`` (the library's :class:`CommitOutcomeUnknownError`)
is in doubt and may be either, and is counted apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import (
    URL,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tests._uvicorn import httpx

if TYPE_CHECKING:
    from tests.conftest import Backend

metadata = MetaData()
AUDIT = Table(
    "reliability_audit",  # no unique key: a write applied twice shows as two rows
    metadata,
    Column("id", Integer, primary_key=True),
    Column("k", String(64), nullable=False),
)
IN_DOUBT_HEADER = "x-commit-outcome"
REQUEST_TIMEOUT = 30.0


@dataclass
class Answer:
    """What the client got for one write: a status (``None``: no answer) and when."""

    key: str
    status: int | None
    in_doubt: bool
    started: float
    ended: float
    error: str = ""  # the client's error when there was no answer

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits)


async def _post(client: httpx.AsyncClient, url: str, key: str) -> Answer:
    started = time.monotonic()
    try:
        response = await client.post(f"{url}/{key}")
    except httpx.HTTPError as exc:
        return Answer(key, None, False, started, time.monotonic(), f"{type(exc).__name__}: {exc}")
    doubt = response.headers.get(IN_DOUBT_HEADER) == "unknown"
    return Answer(key, response.status_code, doubt, started, time.monotonic())


async def send(base: str, path: str, keys: list[str], *, concurrency: int) -> list[Answer]:
    """POST ``{base}{path}/{key}`` for every key, ``concurrency`` at a time (a request
    unanswered after ``REQUEST_TIMEOUT`` s counts as no answer)."""
    gate = asyncio.Semaphore(concurrency)
    async with _client(concurrency) as client:

        async def one(key: str) -> Answer:
            async with gate:
                return await _post(client, f"{base}{path}", key)

        return list(await asyncio.gather(*(one(key) for key in keys)))


async def send_until(
    base: str, path: str, done: asyncio.Event, *, concurrency: int
) -> list[Answer]:
    """POST ``{base}{path}/{key}`` with new keys from ``concurrency`` clients until ``done``."""
    answers: list[Answer] = []
    async with _client(concurrency) as client:

        async def worker(number: int) -> None:
            while not done.is_set():
                answers.append(await _post(client, f"{base}{path}", f"{number}-{len(answers)}"))

        await asyncio.gather(*(worker(number) for number in range(concurrency)))
    return answers


def server_env(backend: Backend) -> dict[str, str]:
    """The environment that points tests/reliability/audit_app.py at ``backend``."""
    return {
        "FDBS_URL": backend.url.render_as_string(hide_password=False),
        "FDBS_ASYNC_URL": backend.async_url.render_as_string(hide_password=False),
    }


def create_table(url: URL) -> None:
    """An empty audit table in ``url``'s database (dropped first if a run left one)."""
    drop_table(url)
    _run(url, metadata.create_all)


def drop_table(url: URL) -> None:
    _run(url, metadata.drop_all)


def _run(url: URL, ddl: Callable[[Engine], None]) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        ddl(engine)
    finally:
        engine.dispose()


def rows_by_key(url: URL) -> Counter[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT k, count(*) FROM reliability_audit GROUP BY k"))
            return Counter({key: int(count) for key, count in rows})
    finally:
        engine.dispose()


def audit(url: URL, answers: list[Answer]) -> dict[str, object]:
    """Check every answer against the table; return the figures.

    Raises:
        AssertionError: A 2xx row is missing or duplicated, an error's row is present, a
            request got no answer, or a row exists that no request wrote.
    """
    rows = rows_by_key(url)
    sent = {answer.key for answer in answers}
    acknowledged = [a for a in answers if a.acknowledged]
    in_doubt = [a for a in answers if a.in_doubt]
    failed = [a for a in answers if not a.acknowledged and not a.in_doubt]  # one pass: soaks
    missing = [a.key for a in acknowledged if rows[a.key] != 1]
    leaked = [a.key for a in failed if rows[a.key] != 0]
    doubled = [a.key for a in in_doubt if rows[a.key] > 1]
    strangers = set(rows) - sent
    assert not missing, f"2xx writes not present exactly once: {missing[:10]}"
    assert not leaked, f"failed writes that persisted: {leaked[:10]}"
    assert not doubled, f"in-doubt writes applied twice: {doubled[:10]}"
    assert not strangers, f"rows no request wrote: {sorted(strangers)[:10]}"
    unanswered = [
        (a.key, a.error, round(a.ended - a.started, 3)) for a in answers if a.status is None
    ]
    assert not unanswered, f"requests without an answer: {unanswered[:10]}"
    return {
        "sent": len(answers),
        "acknowledged": len(acknowledged),
        "verified_present": sum(1 for a in acknowledged if rows[a.key] == 1),
        "verified_absent": sum(1 for a in failed if rows[a.key] == 0),
        "in_doubt": len(in_doubt),
        "in_doubt_committed": sum(1 for a in in_doubt if rows[a.key] == 1),
        "statuses": dict(sorted(Counter(str(a.status) for a in answers).items())),
        "longest_request_s": round(max(a.ended - a.started for a in answers), 3),
    }


_KILL_SQL = {
    "postgresql": (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        "SELECT pg_terminate_backend({})",
    ),
    "mysql": (
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
        "AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'",
        "KILL {}",
    ),
}


class Killer:
    """Every ``interval`` s, end every backend of ``url``'s database but its own.

    Only that database's backends: the other tests' databases on a shared server are never
    touched. ``kills`` counts the backends ended, ``rounds`` the rounds that ended any.
    """

    def __init__(self, url: URL, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.kills = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                while not self._stop.wait(self.interval):
                    ended = end_backends(connection)
                    self.kills += ended
                    self.rounds += bool(ended)
        finally:
            engine.dispose()


def backends(connection: Connection) -> list[int]:
    """The ids of every backend of ``connection``'s database but its own."""
    listing, _ = _KILL_SQL[connection.dialect.name]
    return [int(victim) for victim in connection.scalars(text(listing)).all()]


def end_backends(connection: Connection) -> int:
    """End every backend of ``connection``'s database but its own (an autocommit
    connection); return how many were ended."""
    _, kill = _KILL_SQL[connection.dialect.name]
    ended = 0
    for victim in backends(connection):
        with contextlib.suppress(DBAPIError):  # it ended on its own
            connection.execute(text(kill.format(victim)))
            ended += 1
    return ended
