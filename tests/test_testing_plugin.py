"""The pytest plugin, proven the way users meet it: sample projects run with pytester.

Each sample project has an app module (sync and async routes, services with REQUIRES_NEW and
NESTED, an endpoint that commits, rolls back and commits again) and test files that use the
plugin's fixtures. We assert the outcomes pytest reports, and what is left in the database.
"""

from __future__ import annotations

import textwrap

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.conftest import SERVERS, Backend

APP = """
import os

from fastapi import Depends, FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, Propagation, transactional

db = DatabaseSessionManager(os.environ["SAMPLE_URL"], async_url=os.environ["SAMPLE_ASYNC_URL"])
app = FastAPI(lifespan=db.lifespan)


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "plugin_widgets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@db.transactional(propagation=Propagation.REQUIRES_NEW)
def audit(name: str, session: Session = CURRENT_SESSION) -> None:
    session.add(Widget(name="audit-" + name))


@transactional(propagation=Propagation.NESTED)
def nested(name: str, session: Session = CURRENT_SESSION) -> None:
    session.add(Widget(name="nested-" + name))


@app.post("/widgets")
def create(name: str, session: Session = Depends(db.session)) -> dict[str, int]:
    audit(name)
    session.add(Widget(name=name))
    session.commit()                      # the app commits...
    session.add(Widget(name="dropped"))
    session.rollback()                    # ...rolls back...
    nested(name)
    session.commit()                      # ...and commits again
    return {"count": len(session.scalars(select(Widget)).all())}


@app.post("/awidgets")
async def acreate(name: str, session: AsyncSession = Depends(db.async_session)) -> dict[str, int]:
    session.add(Widget(name=name))
    await session.commit()
    return {"count": len((await session.scalars(select(Widget))).all())}


@app.get("/widgets")
def names(session: Session = Depends(db.session)) -> list[str]:
    return [w.name for w in session.scalars(select(Widget).order_by(Widget.name))]


@app.get("/widgets/n-plus-one")
def n_plus_one(session: Session = Depends(db.session)) -> int:
    ids = list(session.scalars(select(Widget.id)))
    return sum(len(session.scalars(select(Widget).where(Widget.id == i)).all()) for i in ids)
"""

SYNC_TESTS = """
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from sample_app import Widget, app, db


def committed_count():
    engine = create_engine(db.url, poolclass=NullPool)
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(Widget))
    engine.dispose()
    return count


def test_app_commits_are_visible_inside_the_test(db_session):
    db_session.add(Widget(name="from-the-test"))
    db_session.flush()
    with TestClient(app) as client:
        assert client.post("/widgets", params={"name": "w"}).json() == {"count": 4}
        names = client.get("/widgets").json()
    assert names == ["audit-w", "from-the-test", "nested-w", "w"]
    with db.transaction() as session:  # outside requests too
        assert len(session.scalars(select(Widget)).all()) == 4


def test_and_gone_afterwards(db_isolation):
    assert committed_count() == 0
    with TestClient(app) as client:
        assert client.get("/widgets").json() == []


def test_query_budget(db_session, assert_max_queries):
    db_session.add_all([Widget(name=str(n)) for n in range(3)])
    db_session.flush()
    with TestClient(app) as client, assert_max_queries(1):
        assert len(client.get("/widgets").json()) == 3  # one SELECT, whatever the row count
"""

ASYNC_TESTS = """
import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from sample_app import Widget, app, db

try:
    import httpx2 as httpx
except ImportError:
    pass


def committed_count():
    engine = create_engine(db.url, poolclass=NullPool)
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(Widget))
    engine.dispose()
    return count


async def exercise():
    async with db.async_transaction() as session:   # test data, on the test's loop
        session.add(Widget(name="from-the-test"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/awidgets", params={"name": "a"})
    assert response.json() == {"count": 2}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_with_anyio(db_isolation, anyio_backend):
    await exercise()


@pytest.mark.asyncio
async def test_with_pytest_asyncio(db_isolation):
    await exercise()


@pytest.mark.asyncio
async def test_with_pytest_asyncio_again(db_isolation):
    await exercise()  # a new event loop: no "attached to a different loop"


def test_nothing_left(db_isolation):
    assert committed_count() == 0
"""


def _configure(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    backend: Backend,
    url: URL,
    **ini: str,
) -> None:
    pytester.makepyfile(sample_app=APP)
    options = {
        "dbsession_manager": '"sample_app:db"',
        "dbsession_metadata": '"sample_app:Base"',
        "asyncio_default_fixture_loop_scope": '"function"',
        **ini,
    }
    pytester.makepyprojecttoml(
        "[tool.pytest.ini_options]\n" + "\n".join(f"{k} = {v}" for k, v in options.items())
    )
    async_url = url.set(drivername=backend.async_url.drivername)
    monkeypatch.setenv("SAMPLE_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("SAMPLE_ASYNC_URL", async_url.render_as_string(hide_password=False))


def _create_table(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE plugin_widgets (id INTEGER PRIMARY KEY "
                + ("AUTO_INCREMENT" if url.get_backend_name() == "mysql" else "")
                + ", name VARCHAR(50))"
                if url.get_backend_name() != "postgresql"
                else "CREATE TABLE plugin_widgets (id SERIAL PRIMARY KEY, name VARCHAR(50))"
            )
        )
    engine.dispose()


def _count(url: URL) -> int:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        count = int(connection.scalar(text("SELECT count(*) FROM plugin_widgets")))
    engine.dispose()
    return count


def _drop_table(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS plugin_widgets"))
    engine.dispose()


@pytest.fixture
def sample_url(backend: Backend) -> URL:
    _drop_table(backend.url)
    _create_table(backend.url)
    yield backend.url
    _drop_table(backend.url)


def test_isolation_covers_the_apps_own_commits_sync(
    pytester: pytest.Pytester, backend: Backend, sample_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, sample_url)
    pytester.makepyfile(test_sync=SYNC_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=3)
    assert _count(sample_url) == 0


def test_isolation_for_async_tests_with_anyio_and_pytest_asyncio(
    pytester: pytest.Pytester, backend: Backend, sample_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, sample_url)
    pytester.makepyfile(test_async=ASYNC_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=4)
    assert _count(sample_url) == 0


def test_in_memory_sqlite(
    pytester: pytest.Pytester, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = URL.create("sqlite")
    backend = Backend("sqlite", memory, memory.set(drivername="sqlite+aiosqlite"))
    _configure(pytester, monkeypatch, backend, memory)
    pytester.makeconftest(
        """
        import pytest
        from sample_app import Base, db

        @pytest.fixture(scope="session", autouse=True)
        def tables():
            Base.metadata.create_all(db.engine)
        """
    )
    # One shared in-memory database: no second connection can look from outside.
    pytester.makepyfile(test_sync=SYNC_TESTS.replace("    assert committed_count() == 0\n", ""))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=3)


def test_query_budget_failure_lists_the_statements(
    pytester: pytest.Pytester, backend: Backend, sample_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, sample_url)
    pytester.makepyfile(
        test_budget=textwrap.dedent(
            """
            from fastapi.testclient import TestClient
            from sample_app import Widget, app

            def test_too_many(db_session, assert_max_queries):
                db_session.add_all([Widget(name=str(n)) for n in range(3)])
                db_session.flush()
                with TestClient(app) as client, assert_max_queries(2):
                    client.get("/widgets/n-plus-one")
            """
        )
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected at most 2 SQL statements, 4 were executed*"])


def test_leak_check_names_the_table(
    pytester: pytest.Pytester, backend: Backend, sample_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, sample_url, dbsession_leak_check="true")
    pytester.makepyfile(
        test_leak=textwrap.dedent(
            """
            from fastapi.testclient import TestClient
            from sample_app import app

            def test_forgot_isolation():
                with TestClient(app) as client:
                    client.post("/awidgets", params={"name": "leaked"})

            def test_isolated(db_isolation):
                with TestClient(app) as client:
                    client.post("/awidgets", params={"name": "fine"})
            """
        )
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_forgot_isolation changed committed data without the db_isolation fixture: "
            "plugin_widgets +1 rows*"
        ]
    )
    assert _count(sample_url) == 1  # the leak is real, and reported


@pytest.mark.parametrize("backend", [SERVERS["postgresql"], SERVERS["mariadb"]], indirect=True)
def test_fresh_database_per_xdist_worker(
    pytester: pytest.Pytester, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, backend.url, dbsession_create_database="true")
    pytester.makepyfile(
        test_workers=textwrap.dedent(
            """
            import os
            import pytest
            from fastapi.testclient import TestClient
            from sample_app import app, db

            @pytest.mark.parametrize("n", range(4))
            def test_own_database(db_isolation, dbsession_database, n):
                worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
                assert dbsession_database.database.endswith(f"_test_{worker}_{os.getpid()}")
                assert db.url.database == dbsession_database.database
                with TestClient(app) as client:
                    assert client.post("/awidgets", params={"name": "x"}).json() == {"count": 1}
            """
        )
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-n", "2")

    result.assert_outcomes(passed=4)
    engine = create_engine(backend.url, poolclass=NullPool)
    with engine.connect() as connection:
        leftovers = (
            [name for name in inspect(connection).get_schema_names() if "_test_" in name]
            if backend.name == "mariadb"
            else list(
                connection.scalars(
                    text("SELECT datname FROM pg_database WHERE datname LIKE '%\\_test\\_gw%'")
                )
            )
        )
    engine.dispose()
    assert leftovers == []  # every worker dropped its database


ASYNC_UNITS_TESTS = """
import httpx
import pytest
from sqlalchemy import select

from fastapi_dbsession import CURRENT_SESSION, Propagation, transactional
from sample_app import Widget, app, db

try:
    import httpx2 as httpx
except ImportError:
    pass


@db.transactional(propagation=Propagation.REQUIRES_NEW)
async def audit(session=CURRENT_SESSION):
    session.add(Widget(name="audit"))


@transactional(propagation=Propagation.NESTED)
async def nested(session=CURRENT_SESSION):
    session.add(Widget(name="nested"))


@pytest.mark.asyncio
async def test_async_units_inside_isolation(db_isolation, count_queries):
    async with db.async_transaction() as session:
        await audit()
        await nested()
        session.add(Widget(name="outer"))
    with count_queries() as queries:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/awidgets", params={"name": "a"})
    assert response.json() == {"count": 4}
    assert len(queries) == 2  # the INSERT and the SELECT: async statements are counted


@pytest.mark.asyncio
async def test_and_nothing_is_left(db_isolation):
    async with db.async_transaction() as session:
        assert (await session.scalars(select(Widget))).all() == []
"""


def test_async_propagation_and_query_counting_inside_isolation(
    pytester: pytest.Pytester, backend: Backend, sample_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, sample_url)
    pytester.makepyfile(test_async_units=ASYNC_UNITS_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=2)
    assert _count(sample_url) == 0


HAND_WIRED_APP = """
import os

from fastapi import Depends, FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

engine = create_engine(os.environ["SAMPLE_URL"])
SessionLocal = sessionmaker(bind=engine)
app = FastAPI()


def get_db():
    session = SessionLocal()
    try:
        yield session
    finally:
        session.close()


@app.post("/widgets")
def create(name: str, session: Session = Depends(get_db)) -> int:
    session.execute(text("INSERT INTO plugin_widgets (name) VALUES (:name)"), {"name": name})
    session.commit()
    return session.execute(text("SELECT count(*) FROM plugin_widgets")).scalar_one()
"""


def test_override_helper_isolates_a_hand_wired_app(
    pytester: pytest.Pytester, backend: Backend, sample_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(pytester, monkeypatch, backend, sample_url)
    pytester.makepyfile(hand_wired=HAND_WIRED_APP)
    pytester.makepyfile(
        test_hand_wired=textwrap.dedent(
            """
            import pytest
            from fastapi.testclient import TestClient

            from fastapi_dbsession.testing import override_dependency
            from hand_wired import app, get_db
            from sample_app import db

            @pytest.fixture
            def client(db_isolation):
                override_dependency(app, get_db, db)
                yield TestClient(app)
                app.dependency_overrides.clear()

            @pytest.mark.parametrize("run", range(2))
            def test_commits_stay_inside_the_test(client, run):
                assert client.post("/widgets", params={"name": "x"}).json() == 1
            """
        )
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=2)
    assert _count(sample_url) == 0


@pytest.mark.parametrize("backend", [SERVERS["postgresql"]], indirect=True)
def test_test_database_migrated_with_alembic(
    pytester: pytest.Pytester, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(
        pytester,
        monkeypatch,
        backend,
        backend.url,
        dbsession_create_database="true",
        dbsession_alembic_ini='"alembic.ini"',
        dbsession_metadata='""',
    )
    pytester.makefile(
        ".ini",
        alembic="[alembic]\nscript_location = migrations\nsqlalchemy.url = driver://unset\n",
    )
    migrations = pytester.mkpydir("migrations")
    (migrations / "env.py").write_text(
        textwrap.dedent(
            """
            from alembic import context
            from sqlalchemy import create_engine

            url = context.config.get_main_option("sqlalchemy.url")
            with create_engine(url).connect() as connection:
                context.configure(connection=connection)
                with context.begin_transaction():
                    context.run_migrations()
            """
        )
    )
    (migrations / "script.py.mako").write_text("")
    versions = migrations / "versions"
    versions.mkdir()
    (versions / "0001_widgets.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "0001"
            down_revision = None

            def upgrade():
                op.create_table(
                    "plugin_widgets",
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.String(50)),
                )
            """
        )
    )
    pytester.makepyfile(
        test_migrated=textwrap.dedent(
            """
            from fastapi.testclient import TestClient
            from sample_app import app

            def test_tables_come_from_the_migration(db_isolation):
                with TestClient(app) as client:
                    assert client.post("/awidgets", params={"name": "x"}).json() == {"count": 1}
            """
        )
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")

    result.assert_outcomes(passed=1)
