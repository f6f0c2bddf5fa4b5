"""pytest fixtures that start throwaway PostgreSQL clusters and PgBouncer (see tests/clusters.py).

Registered for the whole suite by ``pytest_plugins`` in tests/conftest.py. Mark the tests that
use them ``@pytest.mark.topology``.

- ``pg_primary``, ``pg_standby``, ``pg_bouncer`` (session): one primary
  (``max_prepared_transactions = 10``), an asynchronous hot standby of it and a PgBouncer in
  front of it in transaction mode, shared by every test. Do not stop, freeze or promote them;
  give each test its own tables or database (``pg_primary.create_database(...)``).
- ``topology`` (function): a :class:`~tests.clusters.Topology` to build clusters the test may
  damage; all of it is stopped and removed after the test, passed or failed.

A program that is missing (PostgreSQL's server binaries, PgBouncer) skips the test with the
command that installs it, except under ``CI=true``, where the test fails. A server that is
installed but does not start always fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.clusters import Cluster, PgBouncer, ToolMissingError, Topology


def _tool_missing(exc: ToolMissingError) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {exc}", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def session_topology() -> Iterator[Topology]:
    """The topology the session-scoped clusters belong to, closed at the end of the session."""
    with Topology(on_missing_tool=_tool_missing) as topology:
        yield topology


@pytest.fixture(scope="session")
def pg_primary(session_topology: Topology) -> Cluster:
    """A running primary shared by the session (two-phase commit enabled)."""
    return session_topology.primary(settings={"max_prepared_transactions": "10"})


@pytest.fixture(scope="session")
def pg_standby(session_topology: Topology, pg_primary: Cluster) -> Cluster:
    """An asynchronous hot standby of ``pg_primary``, streaming."""
    return session_topology.standby(pg_primary)


@pytest.fixture(scope="session")
def pg_bouncer(session_topology: Topology, pg_primary: Cluster) -> PgBouncer:
    """PgBouncer (``pool_mode = transaction``) in front of ``pg_primary``."""
    return session_topology.pgbouncer(pg_primary)


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A topology for this test alone: start clusters with ``topology.primary()`` etc."""
    with Topology(on_missing_tool=_tool_missing) as topology:
        yield topology
