"""A test that needs a server carries its marker, or fails: the no-server selection stays honest.

``-m "not postgresql and not mariadb and not topology"`` must run with no server at all, so
tests/conftest.py fails any test that reaches a server without the server's marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_SERVERS = "not postgresql and not mariadb and not topology"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A test directory that uses this suite's conftest, with every server unreachable."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("FDBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:1/t")
    monkeypatch.setenv("FDBS_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:1/t")
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')
    pytester.makeini(
        "[pytest]\nmarkers =\n    postgresql: x\n    mariadb: x\n    topology: x\n"
        "addopts = -p no:cacheprovider\n"
    )
    return pytester


UNMARKED = {
    # the mistake this guards against: a bare string drops the fixture param's marker
    "postgresql": '@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)\n'
    "def test_it(backend):\n    pass\n",
    "mariadb": "def test_it(mariadb_schema):\n    pass\n",
    "topology": "def test_it(pg_primary):\n    pass\n",
}
MARKED = """
import pytest
from tests.conftest import SERVERS

def test_every_backend(backend):
    assert backend.count() == 0

@pytest.mark.parametrize("backend", [SERVERS["postgresql"]], indirect=True)
def test_postgres_only(backend):
    pass

@pytest.mark.topology
def test_cluster(pg_primary):
    pass
"""


@pytest.mark.timeout(240)  # a pytest subprocess
def test_no_server_selection_runs_sqlite_and_fails_unmarked_server_tests(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_marked=MARKED,
        **{
            f"test_unmarked_{marker}": "import pytest\n\n\n" + body
            for marker, body in UNMARKED.items()
        },
    )

    result = project.runpytest_subprocess("-m", NO_SERVERS)

    # marked server tests deselected, sqlite ran, each unmarked one refused with its marker
    result.assert_outcomes(passed=1, errors=3, deselected=4)
    result.stdout.fnmatch_lines_random(
        [
            f"*test_unmarked_{marker}.py::test_it* needs the {marker} server but is not marked*"
            for marker in UNMARKED
        ]
    )
    assert "not reachable" not in result.stdout.str()  # refused before any connection
