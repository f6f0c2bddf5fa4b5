"""Fixtures: the plugin's ``db_isolation`` wraps every test in one outer transaction.

Every session the app opens during a test (request sessions through TestClient,
``db.transaction()``, ``@transactional``) joins that transaction through a SAVEPOINT, so even
the app's own ``session.commit()`` is undone when the test ends.
"""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app import app
from fastapi_dbsession import DatabaseSessionManager


# --8<-- [start:fixtures]
@pytest.fixture
def client(db_isolation: DatabaseSessionManager) -> Iterator[TestClient]:
    """A client whose requests run inside the test's outer transaction."""
    with TestClient(app) as client:
        yield client


# --8<-- [end:fixtures]
