"""Fixtures: every test runs inside one outer transaction that is rolled back at its end.

The app's request session is replaced (``app.dependency_overrides[db.session]``) by a session
bound to that transaction with ``join_transaction_mode="create_savepoint"``, so even the
app's own ``session.commit()`` only releases a SAVEPOINT: nothing a test does is ever
committed, and every test starts from the same database.
"""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app import Base, app, db


# --8<-- [start:fixtures]
@pytest.fixture(scope="session")
def tables() -> Iterator[None]:
    """Create the schema once per test run (a real project runs its migrations here)."""
    Base.metadata.create_all(db.engine)
    yield
    Base.metadata.drop_all(db.engine)
    db.dispose()


@pytest.fixture
def session(tables: None) -> Iterator[Session]:
    """A session inside an outer transaction that the test rolls back at its end."""
    connection = db.engine.connect()
    outer_transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()
        outer_transaction.rollback()  # everything the test and the app did is undone
        connection.close()


@pytest.fixture
def client(session: Session) -> Iterator[TestClient]:
    """A client whose requests all use the test's session."""
    app.dependency_overrides[db.session] = lambda: session
    try:
        yield TestClient(app)  # not entered: the lifespan would dispose db.engine
    finally:
        app.dependency_overrides.pop(db.session)


# --8<-- [end:fixtures]
