"""The topology harness (tests/clusters.py) on real processes: clusters, standbys, PgBouncer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.clusters import Cluster, PgBouncer, ToolMissingError, Topology, processes_under

pytestmark = pytest.mark.topology

ROOT = Path(__file__).resolve().parent.parent


def _in_thread(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _is_alive(pid: int) -> bool:
    """Running, stopped or sleeping: not gone, not a zombie (orphans wait for PID 1 to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _fresh_database(primary: Cluster) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    primary.create_database(name)
    return name


def test_primary_accepts_connections_on_its_own_port(pg_primary: Cluster) -> None:
    engine = create_engine(pg_primary.url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            port = connection.scalar(text("SELECT inet_server_port()"))
            fsync = connection.scalar(text("SHOW fsync"))
            prepared = connection.scalar(text("SHOW max_prepared_transactions"))
            shared_memory = connection.scalar(text("SHOW dynamic_shared_memory_type"))
    finally:
        engine.dispose()

    assert port == pg_primary.port != 5432
    assert (fsync, prepared, shared_memory) == ("off", "10", "mmap")
    assert not pg_primary.is_in_recovery()
    assert str(pg_primary.data_dir).startswith(str(pg_primary.directory))


def test_row_written_on_primary_is_read_on_standby_after_replay(
    pg_primary: Cluster, pg_standby: Cluster
) -> None:
    database = _fresh_database(pg_primary)
    pg_primary.execute("CREATE TABLE items (name text)", database=database)
    pg_primary.execute("INSERT INTO items VALUES ('ada')", database=database)

    pg_standby.wait_replayed()

    assert pg_standby.execute("SELECT name FROM items", database=database) == [("ada",)]
    assert pg_standby.is_in_recovery()
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        pg_standby.execute("INSERT INTO items VALUES ('bob')", database=database)


def test_synchronous_commit_waits_for_the_standby(topology: Topology) -> None:
    primary = topology.primary()
    standby = topology.standby(primary, synchronous=True)
    primary.execute("CREATE TABLE items (name text)")
    committed = threading.Event()

    def commit() -> None:
        primary.execute("INSERT INTO items VALUES ('ada')")
        committed.set()

    with standby.frozen():
        thread = _in_thread(commit)
        assert not committed.wait(0.5)
        waits = primary.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'INSERT INTO items%'"
        )
        assert waits == [("SyncRep",)]
    assert committed.wait(10)
    thread.join()

    assert primary.replication()[standby.application_name] == ("streaming", "sync")


def test_promote_makes_the_standby_writable(topology: Topology) -> None:
    primary = topology.primary()
    standby = topology.standby(primary)
    primary.execute("CREATE TABLE items (name text)")
    standby.wait_replayed()

    primary.stop("immediate")
    standby.promote()
    standby.execute("INSERT INTO items VALUES ('after failover')")

    assert not standby.is_in_recovery()
    assert standby.upstream is None
    assert standby.execute("SELECT name FROM items") == [("after failover",)]


def test_pgbouncer_routes_queries_in_transaction_mode(
    pg_bouncer: PgBouncer, pg_primary: Cluster
) -> None:
    config = {row[0]: row[1] for row in pg_bouncer.admin("SHOW CONFIG")}
    with pg_bouncer.connect() as first, pg_bouncer.connect() as second:
        first_backend = first.execute("SELECT pg_backend_pid(), inet_server_port()").fetchone()
        second_backend = second.execute("SELECT pg_backend_pid(), inet_server_port()").fetchone()

    assert config["pool_mode"] == "transaction"
    # transaction pooling: the first client's idle server connection serves the second one
    assert first_backend == second_backend
    assert first_backend is not None
    assert first_backend[1] == pg_primary.port
    assert pg_bouncer.port not in (pg_primary.port, 5432, 6432)


def test_pgbouncer_point_at_moves_new_transactions_to_another_cluster(
    topology: Topology,
) -> None:
    old_primary, new_primary = topology.primary(name="old"), topology.primary(name="new")
    bouncer = topology.pgbouncer(old_primary)

    bouncer.point_at(new_primary)

    with bouncer.connect() as connection:
        assert connection.execute("SELECT inet_server_port()").fetchone() == (new_primary.port,)


def test_freeze_makes_a_query_hang_and_unfreeze_resumes_it(topology: Topology) -> None:
    primary = topology.primary()
    answered = threading.Event()
    with primary.connect() as connection:

        def query() -> None:
            connection.execute("SELECT 1")
            answered.set()

        primary.freeze()
        try:
            thread = _in_thread(query)
            assert not answered.wait(0.5)
        finally:
            primary.unfreeze()
        assert answered.wait(5)
        thread.join()


def test_kill_then_start_recovers_committed_rows(topology: Topology) -> None:
    primary = topology.primary()
    primary.execute("CREATE TABLE items (name text)")
    primary.execute("INSERT INTO items VALUES ('ada')")
    postmaster = primary.pid

    primary.kill()
    assert primary.pid is None
    assert primary.processes() == []
    assert postmaster is not None
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)

    primary.start()
    primary.restart("immediate")
    assert primary.execute("SELECT name FROM items") == [("ada",)]


def test_close_leaves_no_process_directory_or_shared_memory(topology: Topology) -> None:
    primary = topology.primary()
    standby = topology.standby(primary)
    bouncer = topology.pgbouncer(primary)
    standby_memory = (standby.data_dir / "postmaster.pid").read_text().splitlines()[6].split()[1]
    primary.freeze()  # even a frozen server goes away
    directories = [server.directory for server in topology.servers]
    pids = [pid for server in topology.servers for pid in server.processes()]
    assert bouncer.pid in pids
    assert len(pids) > 10
    standby.kill()  # a SIGKILLed postmaster leaves its SysV shared memory segment

    topology.close()

    assert [processes_under(directory) for directory in directories] == [[], [], []]
    assert [directory.exists() for directory in directories] == [False, False, False]
    assert [pid for pid in pids if _is_alive(pid)] == []
    shm_ids = [row.split()[1] for row in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]
    assert standby_memory not in shm_ids


@pytest.mark.parametrize("ending", ["exception", "sigterm"])
def test_interpreter_exit_cleans_up_what_a_test_left(ending: str) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from tests.clusters import Topology
        topology = Topology()
        primary = topology.primary()
        topology.pgbouncer(primary)
        print(primary.directory, topology.servers[1].directory, flush=True)
        if sys.argv[1] == "sigterm":
            time.sleep(60)  # until the test sends SIGTERM, as a CI timeout does
        raise SystemExit("a test crashed without closing its topology")
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, ending],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        directories = [Path(word) for word in process.stdout.readline().split()]
        if ending == "sigterm":
            process.terminate()
        process.communicate(timeout=60)

    assert process.returncode == (-signal.SIGTERM if ending == "sigterm" else 1)
    assert len(directories) == 2
    assert [processes_under(directory) for directory in directories] == [[], []]
    assert [directory.exists() for directory in directories] == [False, False]


@pytest.mark.timeout(240)  # a whole pytest subprocess, itself bounded at 120 s
@pytest.mark.parametrize(
    ("ci", "exit_code", "said"),
    [
        ("true", 1, "CI=true: PostgreSQL server programs"),
        (None, 0, "to enable these tests: apt-get install postgresql"),
    ],
)
def test_missing_postgres_fails_under_ci_and_skips_elsewhere(
    ci: str | None, exit_code: int, said: str
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["FDBS_PG_BIN"] = "/nonexistent/bin"
    if ci is not None:
        env["CI"] = ci
    target = "tests/test_clusters.py::test_primary_accepts_connections_on_its_own_port"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == exit_code, result.stdout + result.stderr
    assert said in result.stdout


def test_missing_pgbouncer_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDBS_PGBOUNCER", "/nonexistent/pgbouncer")
    skipped_or_failed: list[str] = []
    topology = Topology(on_missing_tool=lambda exc: skipped_or_failed.append(str(exc)))

    with pytest.raises(ToolMissingError, match="apt-get install pgbouncer"):
        topology.pgbouncer(None)  # type: ignore[arg-type]  # never reached: no program

    assert skipped_or_failed == [
        "pgbouncer not found (/nonexistent/pgbouncer); to enable these tests: "
        "scripts/install-tools.sh, or apt-get install pgbouncer "
        "(or set FDBS_PGBOUNCER to the program)"
    ]
