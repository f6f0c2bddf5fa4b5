"""Every bad input is refused as early as the information exists, with our error.

One table: each row is a mistake a user makes, the earliest moment the library can know
(``construction`` of the manager, the ``call`` opening a unit of work, ``decoration``,
app ``startup`` under ``db.lifespan``, the ``first request`` or ``first use`` when nothing
earlier can know), the error class and what its message must say. The row's ``early`` step
must raise it; ``late`` (when given) is what a user would do next, where the mistake surfaced
before (``scripts/bad_input_census.py`` runs both and counts raw errors and silent accepts).
"""

# ruff: noqa: E501 (the catalogue reads best one row per line)

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fastapi_dbsession import (
    ConfigurationError,
    DatabaseSessionManager,
    DatabaseUnavailableError,
    DBSessionError,
    Propagation,
    transactional,
)

DB_FILE = Path(tempfile.gettempdir()) / f"fdbs-bad-input-{os.getpid()}.db"
URL = f"sqlite:///{DB_FILE}"


def manager(**kwargs: Any) -> DatabaseSessionManager:
    return DatabaseSessionManager(kwargs.pop("url", URL), **kwargs)


def use_sync(db: DatabaseSessionManager) -> object:
    try:
        with db.transaction() as session:
            return session.scalar(text("SELECT 1"))
    finally:
        db.dispose()


def use_async(db: DatabaseSessionManager) -> object:
    async def run() -> object:
        try:
            async with db.async_transaction() as session:
                return await session.scalar(text("SELECT 1"))
        finally:
            await db.async_dispose()

    return asyncio.run(run())


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def from_env(**variables: str) -> DatabaseSessionManager:
    with environment(**variables):
        return DatabaseSessionManager.from_env(prefix="FDBS_BAD_")


def enter_async_as_sync() -> object:
    with manager().async_transaction():  # type: ignore[attr-defined]
        return None


def enter_sync_as_async() -> object:
    async def run() -> None:
        async with manager().transaction():  # type: ignore[attr-defined]
            pass

    return asyncio.run(run())


def decorate(func: Callable[..., Any], **options: Any) -> Callable[[], object]:
    return lambda: manager().transactional(**options)(func)


async def async_with_sync_session(session: Session) -> object:
    return await session.scalar(text("SELECT 1"))  # type: ignore[misc]


def sync_with_async_session(session: AsyncSession) -> object:
    return session.scalar(text("SELECT 1"))


def generator(session: Session) -> Iterator[int]:
    yield 1


def positional_only(session: Session, /) -> None:
    pass


def endpoint_app(db: DatabaseSessionManager) -> FastAPI:
    """A ``def`` endpoint asking for the AsyncSession."""
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/")
    def read(session: AsyncSession = Depends(db.async_session)) -> str:
        return str(session.scalar(text("SELECT 1")))

    return app


ANNOTATED_DB = DatabaseSessionManager(URL)
AsyncSessionDep = Annotated[AsyncSession, Depends(ANNOTATED_DB.async_session)]


def annotated_endpoint_app() -> FastAPI:
    """The same mistake through an ``Annotated`` alias."""
    app = FastAPI(lifespan=ANNOTATED_DB.lifespan)

    @app.get("/")
    def read_annotated(session: AsyncSessionDep) -> str:
        return str(session.scalar(text("SELECT 1")))

    return app


def start(app: FastAPI) -> object:
    with TestClient(app):
        return None


def first_request(app: FastAPI) -> object:
    app.router.lifespan_context = FastAPI().router.lifespan_context  # no db.lifespan
    with TestClient(app) as client:
        return client.get("/").json()


def unreachable() -> object:
    return use_sync(DatabaseSessionManager("postgresql+psycopg://app:pw@127.0.0.1:1/app"))


def use_cm(cm: object) -> object:
    with cm as session:  # type: ignore[attr-defined]
        return session.scalar(text("SELECT 1"))


def use_async_fn(func: object) -> object:
    db = manager()

    async def run() -> object:
        async with db.async_transaction() as session:
            return func(session)  # type: ignore[operator]

    return asyncio.run(run())


@dataclass(frozen=True)
class Case:
    id: str
    early: Callable[[], object]
    stage: str
    error: type[DBSessionError]
    match: str
    late: Callable[[object], object] | None = None


C = ConfigurationError
S = "construction"

CASES = [
    # -- URLs --------------------------------------------------------------------------------
    Case("url-not-a-string", lambda: DatabaseSessionManager(42), S, C, "must be a database URL"),  # type: ignore[arg-type]
    Case("url-bytes", lambda: DatabaseSessionManager(b"sqlite://"), S, C, "must be a database URL"),  # type: ignore[arg-type]
    Case("no-url", DatabaseSessionManager, S, C, "needs a database URL"),
    Case("url-empty", lambda: DatabaseSessionManager(""), S, C, "not a valid database URL"),
    Case("scheme-http", lambda: DatabaseSessionManager("http://x/db"), S, C, "no dialect 'http'", use_sync),
    Case("scheme-unknown", lambda: DatabaseSessionManager("nosuchdb://"), S, C, "no dialect 'nosuchdb'", use_sync),
    Case("driver-unknown", lambda: DatabaseSessionManager("postgresql+nosuch://h/db"), S, C, "no driver 'nosuch'", use_sync),
    Case("no-double-slash", lambda: DatabaseSessionManager("postgresql//u:pw@h/db"), S, C, 'no "://"'),
    Case("port-not-a-number", lambda: DatabaseSessionManager("postgresql+psycopg://u@h:x/db"), S, C, "port must be a number"),
    Case("hosts-port-not-a-number", lambda: DatabaseSessionManager("postgresql+psycopg://u@h1:x,h2:2/db"), S, C, "several hosts"),
    Case("unencoded-at", lambda: DatabaseSessionManager("postgresql+psycopg://u:p@w@h/db"), S, C, "more than one '@'", use_sync),
    Case("userinfo-in-database", lambda: DatabaseSessionManager("mysql+pymysql:///u:pw@h"), S, C, "database name", use_sync),
    Case("sqlite-with-password", lambda: DatabaseSessionManager("sqlite://u:pw@h/x.db"), S, C, "SQLite URLs have no user", use_sync),
    Case("two-async-urls", lambda: DatabaseSessionManager("sqlite+aiosqlite://", async_url="sqlite+aiosqlite://"), S, C, "names an asyncio driver"),
    Case("async-url-not-a-string", lambda: DatabaseSessionManager(async_url=3.5), S, C, "must be a database URL"),  # type: ignore[arg-type]
    # -- engine options ----------------------------------------------------------------------
    Case("engine-options-not-a-dict", lambda: manager(engine_options=[("pool_size", 1)]), S, C, "must be a dict"),
    Case("engine-option-key-not-str", lambda: manager(engine_options={1: 2}), S, C, "keys must be strings"),
    Case("pool-size-str", lambda: manager(engine_options={"pool_size": "5"}), S, C, r"\['pool_size'\] must be int"),
    Case("pool-size-negative", lambda: manager(engine_options={"pool_size": -1}), S, C, r"\['pool_size'\] must be >= 0", use_sync),
    Case("max-overflow-negative", lambda: manager(engine_options={"max_overflow": -5}), S, C, r"\['max_overflow'\] must be >= -1", use_sync),
    Case("pool-timeout-negative", lambda: manager(engine_options={"pool_timeout": -1}), S, C, r"\['pool_timeout'\] must be >= 0", use_sync),
    Case("pool-timeout-str", lambda: manager(engine_options={"pool_timeout": "30"}), S, C, "must be int or float"),
    Case("pool-recycle-negative", lambda: manager(engine_options={"pool_recycle": -5}), S, C, r"\['pool_recycle'\] must be >= -1", use_sync),
    Case("pool-pre-ping-str", lambda: manager(engine_options={"pool_pre_ping": "yes"}), S, C, "must be bool"),
    Case("echo-int", lambda: manager(engine_options={"echo": 1}), S, C, "must be bool or str"),
    Case("echo-empty-str", lambda: manager(engine_options={"echo": ""}), S, C, r"\['echo'\]='' must be True", use_sync),
    Case("echo-pool-bogus", lambda: manager(engine_options={"echo_pool": "BOGUS"}), S, C, r"\['echo_pool'\]='BOGUS' must be True", use_sync),
    Case("connect-args-str", lambda: manager(engine_options={"connect_args": "x=1"}), S, C, "must be Mapping"),
    Case("poolclass-str", lambda: manager(engine_options={"poolclass": "QueuePool"}), S, C, r"\['poolclass'\] must be a pool class", use_sync),
    Case("poolclass-not-a-pool", lambda: manager(engine_options={"poolclass": dict}), S, C, r"\['poolclass'\] must be a pool class", use_sync),
    Case("pool-size-with-nullpool", lambda: manager(engine_options={"poolclass": NullPool, "pool_size": 5}), S, C, "NullPool takes no 'pool_size'", use_sync),
    Case("engine-isolation-bogus", lambda: manager(engine_options={"isolation_level": "BOGUS"}), S, C, r"\['isolation_level'\]='BOGUS' is not", use_sync),
    Case("async-max-overflow-negative", lambda: manager(async_engine_options={"max_overflow": -5}), S, C, r"async_engine_options\['max_overflow'\]", use_async),
    Case("engine-option-unknown", lambda: manager(engine_options={"bogus": 1}).engine, "first use", C, "Invalid engine options"),
    # -- sessions ----------------------------------------------------------------------------
    Case("session-options-not-a-dict", lambda: manager(session_options="x"), S, C, "must be a dict"),
    Case("session-option-unknown", lambda: manager(session_options={"bogus": 1}), S, C, r"session_options\['bogus'\] is not an argument of", use_sync),
    Case("session-option-bind", lambda: manager(session_options={"bind": None}), S, C, r"session_options\['bind'\]", use_sync),
    Case("session-option-class", lambda: manager(session_options={"class_": Session}), S, C, "session_class=", use_sync),
    Case("session-option-not-bool", lambda: manager(session_options={"expire_on_commit": "no"}), S, C, "must be True or False", use_sync),
    Case("async-session-option-unknown", lambda: manager(async_session_options={"bogus": 1}), S, C, r"async_session_options\['bogus'\]", use_async),
    Case("session-info-not-a-dict", lambda: manager(session_options={"info": True}), S, C, r"session_options\['info'\] must be a dict", use_sync),
    Case("async-session-info-str", lambda: manager(async_session_options={"info": "5"}), S, C, r"async_session_options\['info'\] must be a dict", use_async),
    Case("async-session-twophase-sqlite", lambda: manager(async_session_options={"twophase": True}), S, C, r"\['twophase'\]=True needs PostgreSQL", use_async),
    Case("async-session-no-autobegin", lambda: manager(async_session_options={"autobegin": False}), S, C, r"\['autobegin'\]=False", use_async),
    Case("session-class-int", lambda: manager(session_class=int), S, C, "session_class must be a subclass"),  # type: ignore[arg-type]
    Case("session-class-async", lambda: manager(session_class=AsyncSession), S, C, "session_class must be a subclass"),  # type: ignore[arg-type]
    Case("async-session-class-sync", lambda: manager(async_session_class=Session), S, C, "async_session_class must be a subclass", use_async),  # type: ignore[arg-type]
    Case("async-session-class-int", lambda: manager(async_session_class=int), S, C, "async_session_class must be a subclass", use_async),  # type: ignore[arg-type]
    Case("commit-policy-bogus", lambda: manager(commit_policy="bogus"), S, C, "is not a commit policy"),  # type: ignore[arg-type]
    Case("route-commit-policy-bogus", lambda: manager().commit_policy("bogus"), "call", C, "is not a commit policy"),  # type: ignore[arg-type]
    # -- from_env ----------------------------------------------------------------------------
    Case("env-no-url", from_env, S, C, "found neither FDBS_BAD_URL"),
    Case("env-pool-size-abc", lambda: from_env(FDBS_BAD_URL=URL, FDBS_BAD_POOL_SIZE="abc"), S, C, "FDBS_BAD_POOL_SIZE='abc' is not a valid int"),
    Case("env-pool-size-negative", lambda: from_env(FDBS_BAD_URL=URL, FDBS_BAD_POOL_SIZE="-1"), S, C, "must be >= 0", use_sync),
    Case("env-pre-ping-maybe", lambda: from_env(FDBS_BAD_URL=URL, FDBS_BAD_POOL_PRE_PING="maybe"), S, C, "not a valid flag"),
    Case("env-commit-policy", lambda: from_env(FDBS_BAD_URL=URL, FDBS_BAD_COMMIT_POLICY="bogus"), S, C, "is not a commit policy"),
    # -- units of work -----------------------------------------------------------------------
    Case("isolation-bogus", lambda: manager().transaction(isolation_level="BOGUS"), "call", C, "isolation_level='BOGUS' is not", use_cm),
    Case("isolation-not-on-sqlite", lambda: use_cm(manager().transaction(isolation_level="read_committed")), "first use", C, "sqlite has no READ COMMITTED isolation level"),
    Case("engine-isolation-not-on-sqlite", lambda: manager(engine_options={"isolation_level": "READ COMMITTED"}), S, C, r"\['isolation_level'\]='READ COMMITTED': sqlite has no", use_sync),
    Case("isolation-not-str", lambda: manager().transaction(isolation_level=5), "call", C, "isolation_level=5 is not", use_cm),  # type: ignore[arg-type]
    Case("async-isolation-bogus", lambda: manager().async_transaction(isolation_level="BOGUS"), "call", C, "isolation_level='BOGUS' is not"),
    Case("read-only-not-bool", lambda: manager().transaction(read_only="yes"), "call", C, "read_only='yes' must be True or False"),  # type: ignore[arg-type]
    Case("durable-not-bool", lambda: manager().transaction(durable=1), "call", C, "durable=1 must be True or False"),  # type: ignore[arg-type]
    Case("timeout-negative", lambda: manager().transaction(timeout=-1), "call", C, "must be a number of seconds > 0"),
    Case("timeout-str", lambda: manager().transaction(timeout="5"), "call", C, "must be a number of seconds > 0"),  # type: ignore[arg-type]
    Case("propagation-str", lambda: manager().transaction(propagation="required"), "call", C, "is not a Propagation"),  # type: ignore[arg-type]
    Case("rollback-on-class", lambda: manager().transaction(rollback_on=ValueError), "call", C, "must be a tuple of exception classes"),  # type: ignore[arg-type]
    Case("rollback-on-none", lambda: manager().transaction(rollback_on=None), "call", C, "rollback_on=None must be a tuple of exception classes"),  # type: ignore[arg-type]
    Case("no-rollback-on-int", lambda: manager().transaction(no_rollback_on=5), "call", C, "no_rollback_on=5 must be a tuple"),  # type: ignore[arg-type]
    Case("with-async-transaction", enter_async_as_sync, "call", C, r"async with db\.async_transaction\(\)"),
    Case("async-with-transaction", enter_sync_as_async, "call", C, r"with db\.transaction\(\)"),
    # -- decorators --------------------------------------------------------------------------
    Case("retries-negative", lambda: transactional(retries=-1), "decoration", C, "must be a whole number >= 0"),
    Case("option-unknown", lambda: manager().transactional(bogus=1), "decoration", C, "unknown option"),  # type: ignore[call-overload]
    Case("decorator-isolation-bogus", lambda: transactional(isolation_level="BOGUS"), "decoration", C, "isolation_level='BOGUS' is not"),
    Case("generator-function", decorate(generator), "decoration", C, "cannot wrap the generator"),
    Case("positional-only-session", decorate(positional_only), "decoration", C, "positional-only"),
    Case("async-def-sync-session", decorate(async_with_sync_session), "decoration", C, "is an async function, but its session parameter 'session' is annotated Session", lambda f: asyncio.run(f())),  # type: ignore[operator]
    Case("def-async-session", decorate(sync_with_async_session), "decoration", C, "is a sync function, but its session parameter 'session' is annotated AsyncSession", use_async_fn),
    # -- routes and connections --------------------------------------------------------------
    Case("async-session-in-def-endpoint", lambda: start(endpoint_app(manager())), "startup", C, "read is a def endpoint, but it depends on db.async_session"),
    Case("async-session-in-def-endpoint-no-lifespan", lambda: first_request(endpoint_app(manager())), "first request", C, "read is a def endpoint, but it depends on db.async_session"),
    Case("async-session-annotated-in-def-endpoint", lambda: start(annotated_endpoint_app()), "startup", C, "read_annotated is a def endpoint"),
    Case("async-session-annotated-no-lifespan", lambda: first_request(annotated_endpoint_app()), "first request", C, "read_annotated is a def endpoint"),
    Case("unreachable-port", unreachable, "first use", DatabaseUnavailableError, r"Cannot reach the database at 127\.0\.0\.1:1 "),
]  # fmt: skip


def test_the_catalogue_has_no_duplicates() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_is_refused_early_with_our_error(case: Case) -> None:
    with pytest.raises(case.error, match=case.match) as caught:
        case.early()

    assert type(caught.value).__module__ == "fastapi_dbsession.errors"
    message = str(caught.value)
    assert len(message) > 60, "a message names what went wrong and the fix"
    DB_FILE.unlink(missing_ok=True)


def test_good_input_passes_the_same_checks() -> None:
    """The checks refuse only the mistakes: the nearest valid spellings are accepted."""
    db = DatabaseSessionManager(
        URL,
        engine_options={"pool_size": 0, "max_overflow": -1, "pool_timeout": 0, "pool_recycle": -1},
        session_options={"autoflush": False, "info": {"k": 1}},
        async_session_options={"expire_on_commit": True},
        async_session_class=AsyncSession,
    )
    with db.transaction(isolation_level="serializable") as session:
        assert session.scalar(text("SELECT 1")) == 1
    with db.transaction(isolation_level="READ_UNCOMMITTED", propagation=Propagation.REQUIRES_NEW):
        pass
    assert use_async(db) == 1
    db.dispose()
    DB_FILE.unlink(missing_ok=True)


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def one(self) -> object:
        return await self.session.scalar(text("SELECT 1"))


def test_async_session_in_async_endpoints_and_def_factories_is_fine() -> None:
    """Only a def *endpoint* taking the AsyncSession is refused: a def dependency that wraps
    it (a repository factory) and async endpoints are the usual patterns."""
    db = manager()
    app = FastAPI(lifespan=db.lifespan)

    def repository(session: AsyncSession = Depends(db.async_session)) -> Repository:
        return Repository(session)

    @app.get("/direct")
    async def direct(session: AsyncSession = Depends(db.async_session)) -> object:
        return await session.scalar(text("SELECT 1"))

    @app.get("/factory")
    async def factory(repo: Repository = Depends(repository)) -> object:
        return await repo.one()

    @app.get("/sync", dependencies=[Depends(db.async_session)])
    def sync(session: Session = Depends(db.session)) -> object:
        return session.scalar(text("SELECT 1"))

    with TestClient(app) as client:
        assert [client.get(path).json() for path in ("/direct", "/factory", "/sync")] == [1, 1, 1]
    DB_FILE.unlink(missing_ok=True)
