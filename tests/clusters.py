"""Build throwaway PostgreSQL topologies for the tests: primaries, hot standbys, PgBouncer.

Every server lives in its own temporary directory (data directory, unix socket, log; in
``/dev/shm`` where there is one) and listens on 127.0.0.1 on a free port (never 5432): the
shared server of the machine is never touched. Run as root, the servers run as the
``postgres`` OS user (tests/_servers.py starts and cleans up the processes; tests/pgbouncer.py
runs PgBouncer). Authentication is ``trust`` for local and 127.0.0.1 connections, replication
included; ``fsync`` is off, since nothing here must survive a power cut.

- :meth:`Topology.primary` makes a primary (``initdb`` once per process, then a copy of it).
- :meth:`Topology.standby` makes a hot standby with ``pg_basebackup -R``, optionally a
  synchronous one (``synchronous_standby_names`` on the primary names its ``application_name``).
- :meth:`Topology.pgbouncer` starts PgBouncer in front of a cluster (``pool_mode=transaction``).
- A :class:`Cluster` can be stopped (fast, immediate), started, restarted, killed with SIGKILL,
  frozen with SIGSTOP and thawed, promoted, and waited on (ready, replayed up to an LSN).

:meth:`Topology.close` stops everything it started and removes the directories; an ``atexit``
hook does the same for whatever is still running when the interpreter exits.

Example:
    >>> with Topology() as topology:
    ...     primary = topology.primary(settings={"max_prepared_transactions": "10"})
    ...     standby = topology.standby(primary, synchronous=True)
    ...     primary.execute("CREATE TABLE t (id int)")
    ...     standby.wait_replayed()
    ...     bouncer = topology.pgbouncer(primary)
    ...     engine = create_engine(bouncer.url())
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import psycopg
from sqlalchemy import URL

from tests._servers import (
    Server,
    ServerError,
    ToolMissingError,
    free_port,
    make_dir,
    processes_under,
    remove_at_exit,
    run_program,
    server_user,
    wait_until,
)
from tests.pgbouncer import PgBouncer, pgbouncer_path

__all__ = [
    "Cluster",
    "PgBouncer",
    "ServerError",
    "StopMode",
    "ToolMissingError",
    "Topology",
    "free_port",
    "pgbouncer_path",
    "postgres_bin_dir",
    "processes_under",
]

_T = TypeVar("_T")

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

_TEMPLATE_SETTINGS = """
# fastapi-dbsession test harness: throwaway cluster, speed over durability
listen_addresses = '127.0.0.1'
fsync = off
full_page_writes = off
synchronous_commit = on
shared_buffers = 32MB
max_connections = 100
max_wal_senders = 10
max_replication_slots = 10
wal_level = replica
hot_standby = on
autovacuum = off
log_min_messages = warning
# dynamic shared memory as files in the data directory, not /dev/shm/PostgreSQL.*: a killed
# postmaster's segments go away with the directory
dynamic_shared_memory_type = mmap
log_line_prefix = '%m [%p] '
"""

_HBA = """\
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
"""


def postgres_bin_dir() -> Path:
    """Return the directory holding ``initdb``, ``postgres`` and ``pg_basebackup``.

    ``FDBS_PG_BIN`` wins; else the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout); else
    the directory of ``pg_ctl`` on ``PATH``.

    Raises:
        ToolMissingError: None of them holds the three programs.
    """
    candidates: list[Path] = []
    if os.environ.get("FDBS_PG_BIN"):
        candidates.append(Path(os.environ["FDBS_PG_BIN"]))
    else:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "postgres", "pg_basebackup")):
            return directory
    where = candidates[0] if candidates else "/usr/lib/postgresql/*/bin or PATH"
    raise ToolMissingError(
        f"PostgreSQL server programs (initdb, postgres, pg_basebackup) not found in {where}",
        "apt-get install postgresql (or set FDBS_PG_BIN to the directory holding initdb)",
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _shm_attached(shmid: str) -> int | None:
    """How many processes attach the SysV shared memory segment ``shmid`` (None: no such)."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        columns = row.split()  # key shmid perms size cpid lpid nattch ...
        if len(columns) > 6 and columns[1] == shmid:
            return int(columns[6])
    return None


class Cluster(Server):
    """One throwaway PostgreSQL server: a primary, or a hot standby of ``upstream``.

    Made by :meth:`Topology.primary` and :meth:`Topology.standby`; running when returned.

    Attributes:
        name: Its name in logs and paths, e.g. ``"primary"``.
        port: Its TCP port on 127.0.0.1 (also the number of its unix socket).
        directory: Its temporary directory: ``data/``, the socket, ``<name>.log``.
        data_dir: The data directory.
        settings: Server settings given on the command line (``-c name=value``).
        upstream: The cluster it streams from, ``None`` for a primary (or once promoted).
        application_name: What it calls itself to its upstream (``synchronous_standby_names``).
    """

    kind = "postgres"
    _hard_stop_signal = signal.SIGQUIT  # immediate shutdown

    def __init__(
        self,
        name: str,
        directory: Path,
        port: int,
        *,
        bin_dir: Path,
        settings: Mapping[str, str],
        upstream: Cluster | None = None,
    ) -> None:
        super().__init__(name, directory, port)
        self.bin_dir = bin_dir
        self.data_dir = directory / "data"
        self.settings = dict(settings)
        self.upstream = upstream
        self.application_name = f"{re.sub(r'[^a-z0-9_]', '_', name.lower())}_{port}"
        self.synchronous_standbys: list[str] = []

    # -- addresses ----------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.directory

    def url(self, driver: str = "psycopg", database: str = "postgres", **query: str) -> URL:
        """A SQLAlchemy URL for this server over TCP, e.g. ``postgresql+psycopg://...``.

        Args:
            driver: ``"psycopg"``, ``"asyncpg"``, ``"psycopg2"``, ... (``""`` for the default).
            database: The database name.
            **query: Query-string options of the URL.
        """
        drivername = f"postgresql+{driver}" if driver else "postgresql"
        return URL.create(
            drivername,
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database=database,
            query=query,
        )

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string for this server over its unix socket."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit psycopg connection (close it, or use it in ``with``)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.conninfo(database), **kwargs)

    def execute(
        self, sql: str, params: Sequence[object] | None = None, *, database: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh autocommit connection; return its rows (or ``[]``)."""
        with self.connect(database) as connection:
            cursor = connection.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self, name: str) -> URL:
        """Create a database (it reaches the standbys too) and return its psycopg URL."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(database=name)

    # -- life cycle ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
        ]
        for setting, value in self.settings.items():
            command += ["-c", f"{setting}={value}"]
        return command

    def start(self, *, timeout: float = 30) -> None:
        """Start the postmaster and wait until it accepts connections."""
        self._spawn()
        self.wait_ready(timeout=timeout)

    def stop(self, mode: StopMode = "fast", *, timeout: float = 30) -> None:
        """Stop the server: ``smart`` waits for clients, ``fast`` disconnects them and
        checkpoints, ``immediate`` exits at once (crash recovery at the next start)."""
        self._signal_and_wait(_STOP_SIGNALS[mode], timeout)
        self._kill_leftovers()

    def restart(self, mode: StopMode = "fast", *, timeout: float = 30) -> None:
        """Stop (``mode``) and start again on the same port."""
        self.stop(mode, timeout=timeout)
        self.start(timeout=timeout)

    def wait_ready(self, *, timeout: float = 30) -> None:
        """Wait until the server answers ``SELECT 1`` (a standby: once it is consistent).

        Raises:
            ServerError: It exited, or did not answer within ``timeout`` seconds.
        """

        def answers() -> bool:
            if not self.is_running:
                raise ServerError(f"{self!r} exited while starting\n{self.log_tail()}")
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
            except psycopg.OperationalError:
                return False
            return True

        wait_until(answers, timeout, f"{self!r} to accept connections", self.log_tail)

    def _release_resources(self) -> None:
        """Remove the SysV shared memory header a SIGKILLed postmaster leaves behind.

        A clean stop removes it; after ``kill -9`` it stays until the next start in the same
        data directory. Its id is line 7 of ``postmaster.pid`` (present only after an unclean
        exit once the server is gone); it is removed only when nothing is attached.
        """
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return
        fields = lines[6].split() if len(lines) > 6 else []
        if len(fields) == 2 and fields[1].isdigit() and _shm_attached(fields[1]) == 0:
            with contextlib.suppress(OSError):
                subprocess.run(["ipcrm", "-m", fields[1]], capture_output=True, check=False)

    # -- replication --------------------------------------------------------------------------

    def is_in_recovery(self) -> bool:
        """True for a standby that has not been promoted."""
        return bool(self.execute("SELECT pg_is_in_recovery()")[0][0])

    def current_lsn(self) -> str:
        """The WAL position: written on a primary, replayed on a standby (``'0/3000060'``)."""
        sql = (
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
            "ELSE pg_current_wal_lsn() END"
        )
        return str(self.execute(sql)[0][0])

    def wait_replayed(self, lsn: str | None = None, *, timeout: float = 30) -> None:
        """Wait until this standby has replayed up to ``lsn`` (default: its upstream's now).

        Raises:
            ServerError: Not replayed within ``timeout`` seconds, or not a standby.
        """
        if lsn is None:
            if self.upstream is None:
                raise ServerError(f"{self!r} is not a standby: pass the LSN to wait for")
            lsn = self.upstream.current_lsn()
        with self.connect() as connection:

            def replayed() -> bool:
                row = connection.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()
                return bool(row and row[0])

            wait_until(replayed, timeout, f"{self!r} to replay up to {lsn}", self.log_tail)

    def replication(self) -> dict[str, tuple[str, str]]:
        """On a primary: ``{application_name: (state, sync_state)}`` of its standbys."""
        rows = self.execute("SELECT application_name, state, sync_state FROM pg_stat_replication")
        return {str(name): (str(state), str(sync)) for name, state, sync in rows}

    def set_synchronous_standbys(self, names: Sequence[str]) -> None:
        """Make commits on this primary wait for one of ``names`` (``[]``: for none)."""
        value = ", ".join(f'"{name}"' for name in names)
        value = f"FIRST 1 ({value})" if value else ""
        with self.connect() as connection:
            connection.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{value}'")
            connection.execute("SELECT pg_reload_conf()")
        self.synchronous_standbys = list(names)

    def promote(self, *, timeout: float = 30) -> None:
        """Promote this standby to a primary (``pg_promote``) and wait until it takes writes."""
        if self.upstream is None:
            raise ServerError(f"{self!r} is not a standby")
        self.execute("SELECT pg_promote(true, %s)", (int(timeout),))
        wait_until(
            lambda: not self.is_in_recovery(), timeout, f"{self!r} to leave recovery", self.log_tail
        )
        self.upstream = None


# ---------------------------------------------------------------------------------------------
# Building topologies


class Topology:
    """Every cluster and PgBouncer one test (or one session) started, closed together.

    Example:
        >>> with Topology() as topology:
        ...     primary = topology.primary()
        ...     standby = topology.standby(primary)
    """

    def __init__(
        self, *, on_missing_tool: Callable[[ToolMissingError], object] | None = None
    ) -> None:
        """
        Args:
            on_missing_tool: Called with the error before a :class:`ToolMissingError` is
                raised, e.g. to skip the test instead (the pytest fixtures do).
        """
        self.servers: list[Server] = []
        self._on_missing_tool = on_missing_tool

    def _find(self, lookup: Callable[[], _T]) -> _T:
        try:
            return lookup()
        except ToolMissingError as exc:
            if self._on_missing_tool is not None:
                self._on_missing_tool(exc)
            raise

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def primary(
        self, *, name: str = "primary", settings: Mapping[str, str] | None = None
    ) -> Cluster:
        """Start a new primary.

        Args:
            name: Its name in logs and paths.
            settings: Server settings, e.g. ``{"max_prepared_transactions": "10"}`` for
                two-phase commit tests (they need a restart to change: set them here).

        Returns:
            The running cluster.

        Raises:
            ToolMissingError: PostgreSQL is not installed.
            ServerError: It did not start.
        """
        bin_dir = self._find(postgres_bin_dir)
        self._find(server_user)
        template = _template_data_dir(bin_dir)
        cluster = Cluster(
            name,
            make_dir(name),
            free_port(),
            bin_dir=bin_dir,
            settings=settings or {},
        )
        self.servers.append(cluster)
        run_program(["cp", "-a", template, cluster.data_dir], cluster.directory)
        cluster.start()
        return cluster

    def standby(
        self,
        primary: Cluster,
        *,
        name: str = "standby",
        synchronous: bool = False,
        settings: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> Cluster:
        """Start a hot standby of ``primary`` (``pg_basebackup -R`` and a replication slot).

        Args:
            primary: The cluster to stream from.
            name: Its name in logs and paths.
            synchronous: Add it to the primary's ``synchronous_standby_names``: the primary's
                commits then wait until this standby has flushed them. Returns once it is
                ``sync`` in ``pg_stat_replication``.
            settings: Server settings (default: the primary's).
            timeout: Seconds to wait for the base backup, start and streaming.

        Returns:
            The running standby, streaming.
        """
        cluster = Cluster(
            name,
            make_dir(name),
            free_port(),
            bin_dir=primary.bin_dir,
            settings=primary.settings if settings is None else settings,
            upstream=primary,
        )
        self.servers.append(cluster)
        run_program(
            [
                primary.bin_dir / "pg_basebackup",
                "--pgdata",
                cluster.data_dir,
                "--dbname",
                f"{primary.conninfo()} application_name={cluster.application_name}",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
                "--write-recovery-conf",
                "--create-slot",
                "--slot",
                cluster.application_name,
            ],
            cluster.directory,
            timeout=timeout,
        )
        _forget_synchronous_standbys(cluster.data_dir / "postgresql.auto.conf")
        cluster.start(timeout=timeout)
        wait_until(
            lambda: primary.replication().get(cluster.application_name, ("",))[0] == "streaming",
            timeout,
            f"{cluster!r} to stream from {primary!r}",
            cluster.log_tail,
        )
        if synchronous:
            primary.set_synchronous_standbys(
                [*primary.synchronous_standbys, cluster.application_name]
            )
            wait_until(
                lambda: primary.replication()[cluster.application_name][1] in ("sync", "quorum"),
                timeout,
                f"{cluster!r} to be a synchronous standby of {primary!r}",
                primary.log_tail,
            )
        return cluster

    def pgbouncer(
        self,
        cluster: Cluster,
        *,
        pool_mode: str = "transaction",
        settings: Mapping[str, str] | None = None,
    ) -> PgBouncer:
        """Start PgBouncer in front of ``cluster``.

        Args:
            cluster: Where it forwards.
            pool_mode: ``"transaction"`` (default), ``"session"`` or ``"statement"``.
            settings: Extra ``[pgbouncer]`` settings, e.g. ``{"default_pool_size": "5"}``.

        Raises:
            ToolMissingError: PgBouncer is not installed.
        """
        program = self._find(pgbouncer_path)
        bouncer = PgBouncer(
            make_dir("pgbouncer"),
            free_port(),
            program=program,
            backend=cluster,
            pool_mode=pool_mode,
            settings=settings,
        )
        self.servers.append(bouncer)
        bouncer.start()
        return bouncer

    def close(self) -> None:
        """Stop every server (newest first) and remove their directories."""
        while self.servers:
            self.servers.pop().close()


def _forget_synchronous_standbys(auto_conf: Path) -> None:
    """Drop the primary's ``synchronous_standby_names`` from a base backup's ALTER SYSTEM file:
    a promoted standby must not wait for standbys of its old primary."""
    if auto_conf.exists():
        lines = auto_conf.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith("synchronous_standby_names")]
        auto_conf.write_text("".join(kept))


_template_lock = threading.Lock()
_templates: dict[Path, Path] = {}


def _template_data_dir(bin_dir: Path) -> Path:
    """``initdb`` once per process and PostgreSQL version; primaries start from a copy."""
    with _template_lock:
        if bin_dir in _templates:
            return _templates[bin_dir]
        directory = make_dir("template")
        data = directory / "data"
        try:
            run_program(
                [
                    bin_dir / "initdb",
                    "--pgdata",
                    data,
                    "--username",
                    "postgres",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ],
                directory,
            )
            with (data / "postgresql.conf").open("a") as conf:
                conf.write(_TEMPLATE_SETTINGS)
            (data / "pg_hba.conf").write_text(_HBA)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        _templates[bin_dir] = data
        remove_at_exit(directory)
        return data
