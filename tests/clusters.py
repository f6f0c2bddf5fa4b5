"""Run throwaway PostgreSQL servers (primaries, standbys, PgBouncer) for the topology tests.

Every server lives in its own temporary directory (data directory, unix socket, log; in
``/dev/shm`` where there is one, see ``_temp_root``) and listens on 127.0.0.1 on a free port
(never 5432): the shared server of the machine is never touched.
Run as root, the servers run as the ``postgres`` OS user (initdb and postgres refuse root).
Authentication is ``trust`` for local and 127.0.0.1 connections, replication included; ``fsync``
is off, since nothing here must survive a power cut.

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

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import psycopg
from sqlalchemy import URL

__all__ = [
    "Cluster",
    "ClusterError",
    "PgBouncer",
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

# Ports the harness never hands out: the machine's shared servers and their usual neighbours.
_RESERVED_PORTS = frozenset({5432, 5433, 6432, 3306})

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


class ToolMissingError(RuntimeError):
    """A program the harness needs is not installed.

    Args:
        message: What is missing.
        hint: How to install it, e.g. ``"apt-get install pgbouncer"``.
    """

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message}; to enable these tests: {hint}")
        self.hint = hint


class ClusterError(RuntimeError):
    """A server did not start, stop or answer in time; the message ends with its log."""


# ---------------------------------------------------------------------------------------------
# Tools, users, ports, processes


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


def pgbouncer_path() -> Path:
    """Return the ``pgbouncer`` program: ``FDBS_PGBOUNCER``, ``PATH`` or ``/usr/sbin``.

    Raises:
        ToolMissingError: PgBouncer is not installed.
    """
    given = os.environ.get("FDBS_PGBOUNCER")
    found = given or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if Path(found).is_file():
        return Path(found)
    raise ToolMissingError(
        f"pgbouncer not found ({found})",
        "scripts/install-tools.sh, or apt-get install pgbouncer "
        "(or set FDBS_PGBOUNCER to the program)",
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1 that this process has not handed out before."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in _RESERVED_PORTS and port not in _ports_given:
                _ports_given.add(port)
                return port


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the servers: ``None`` for ourselves, the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("FDBS_PG_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ToolMissingError(
            f"running as root, and there is no {name!r} OS user to run PostgreSQL as",
            "apt-get install postgresql (it creates the user), run as another user, or set "
            "FDBS_PG_USER",
        ) from None


def _as_server_user(cwd: Path) -> dict[str, Any]:
    """``subprocess`` arguments that run a program as the server user, in ``cwd``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", HOME=str(cwd), PGPASSFILE="/dev/null")
    kwargs: dict[str, Any] = {"cwd": cwd, "env": env}
    user = _server_user()
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return kwargs


def _run(args: Sequence[str | Path], cwd: Path, *, timeout: float = 60) -> None:
    """Run a program as the server user; raise :class:`ClusterError` with its output if it fails."""
    result = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        **_as_server_user(cwd),
    )
    if result.returncode != 0:
        raise ClusterError(
            f"{Path(str(args[0])).name} exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


def _temp_root() -> str | None:
    """Where the servers' directories go: ``FDBS_TOPOLOGY_TMPDIR``, else ``/dev/shm`` (memory:
    copying a data directory there takes milliseconds, seconds on a busy disk), else ``/tmp``.
    Short paths only: a unix socket path must fit in 107 bytes."""
    given = os.environ.get("FDBS_TOPOLOGY_TMPDIR")
    if given:
        return given
    for candidate in ("/dev/shm", "/tmp"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def _make_dir(prefix: str) -> Path:
    """A new temporary directory the server user owns."""
    path = Path(tempfile.mkdtemp(prefix=f"fdbs-{prefix}-", dir=_temp_root()))
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def processes_under(directory: Path) -> list[int]:
    """Return the live processes whose working directory is inside ``directory``.

    PostgreSQL's postmaster and every backend it forks work in the data directory, PgBouncer
    in its own directory (the harness starts it there): this finds them even after the
    postmaster died and its backends were orphaned. Zombies are not counted.
    """
    prefix = str(directory)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z" and (cwd == prefix or cwd.startswith(prefix + "/")):
            found.append(int(entry.name))
    return sorted(found)


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


def _wait_until(
    condition: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}\n{log()}")
        time.sleep(0.01)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path}:\n" + "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# The processes


class _Server:
    """A server process the harness started: its directory, port, log and life cycle."""

    kind = "server"

    def __init__(self, name: str, directory: Path, port: int) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.log_path = directory / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []
        _live.add(self)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.name} 127.0.0.1:{self.port} {state}>"

    @property
    def pid(self) -> int | None:
        """The main process (postmaster or pgbouncer) while it runs, else ``None``."""
        return self._process.pid if self.is_running and self._process else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _spawn(self) -> None:
        if self.is_running:
            raise ClusterError(f"{self!r} is already running")
        with self.log_path.open("ab") as log:
            user = _server_user()
            if user is not None:  # the server may reopen it (PgBouncer's logfile)
                os.chown(self.log_path, user.pw_uid, user.pw_gid)
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it
                **_as_server_user(self.directory),
            )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        return _log_tail(self.log_path, lines)

    def processes(self) -> list[int]:
        """Every live process of this server (main process and children)."""
        return processes_under(self.directory)

    def freeze(self) -> None:
        """SIGSTOP the main process, then every child: the server stops answering, sockets open."""
        if self._frozen:
            return
        if self.pid is None:
            raise ClusterError(f"cannot freeze {self!r}: it is not running")
        os.kill(self.pid, signal.SIGSTOP)  # first, so it forks nothing new meanwhile
        self._frozen = [self.pid, *(pid for pid in self.processes() if pid != self.pid)]
        for pid in self._frozen[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def unfreeze(self) -> None:
        """SIGCONT every process :meth:`freeze` stopped."""
        frozen, self._frozen = self._frozen, []
        for pid in reversed(frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Freeze for the duration of a ``with`` block."""
        self.freeze()
        try:
            yield
        finally:
            self.unfreeze()

    def _signal_and_wait(self, signum: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.unfreeze()
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(
                f"{self!r} did not exit within {timeout:g} s of {signum.name}\n{self.log_tail()}"
            ) from None

    def kill(self, *, wait_for_children: float = 10) -> None:
        """SIGKILL the main process only, as ``kill -9 <pid>`` does, and reap it.

        PostgreSQL's backends notice the postmaster's death and exit by themselves; this waits
        up to ``wait_for_children`` seconds for that (then SIGKILLs them), so that
        :meth:`start` can run again. Pass 0 to return at once.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.unfreeze()
        process.kill()
        process.wait()
        if wait_for_children:
            with contextlib.suppress(ClusterError):
                _wait_until(lambda: not self.processes(), wait_for_children, "", lambda: "")
            self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # works on a stopped (frozen) process too
        with contextlib.suppress(ClusterError):
            _wait_until(lambda: not self.processes(), 5, "", lambda: "")

    def close(self) -> None:
        """Stop the server at once, kill anything left of it and remove its directory."""
        _live.discard(self)
        with contextlib.suppress(ClusterError):
            self._signal_and_wait(self._hard_stop_signal, 10)
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._kill_leftovers()
        self._release_resources()
        shutil.rmtree(self.directory, ignore_errors=True)

    _hard_stop_signal = signal.SIGQUIT

    def _release_resources(self) -> None:
        """Free what the server holds outside its directory once it is gone (nothing here)."""


class Cluster(_Server):
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
            ClusterError: It exited, or did not answer within ``timeout`` seconds.
        """

        def answers() -> bool:
            if not self.is_running:
                raise ClusterError(f"{self!r} exited while starting\n{self.log_tail()}")
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
            except psycopg.OperationalError:
                return False
            return True

        _wait_until(answers, timeout, f"{self!r} to accept connections", self.log_tail)

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
            ClusterError: Not replayed within ``timeout`` seconds, or not a standby.
        """
        if lsn is None:
            if self.upstream is None:
                raise ClusterError(f"{self!r} is not a standby: pass the LSN to wait for")
            lsn = self.upstream.current_lsn()
        with self.connect() as connection:

            def replayed() -> bool:
                row = connection.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()
                return bool(row and row[0])

            _wait_until(replayed, timeout, f"{self!r} to replay up to {lsn}", self.log_tail)

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
            raise ClusterError(f"{self!r} is not a standby")
        self.execute("SELECT pg_promote(true, %s)", (int(timeout),))
        _wait_until(
            lambda: not self.is_in_recovery(), timeout, f"{self!r} to leave recovery", self.log_tail
        )
        self.upstream = None


class PgBouncer(_Server):
    """One PgBouncer in front of a cluster, on its own 127.0.0.1 port.

    Made by :meth:`Topology.pgbouncer`; running when returned. Every database name is routed to
    the backend cluster (``* = host=... port=...``); user ``postgres``, ``auth_type = trust``.

    Attributes:
        backend: The cluster it forwards to (see :meth:`point_at`).
        pool_mode: ``"transaction"``, ``"session"`` or ``"statement"``.
        settings: Extra ``[pgbouncer]`` settings, e.g. ``{"default_pool_size": "5"}``.
    """

    kind = "pgbouncer"
    _hard_stop_signal = signal.SIGTERM  # PgBouncer: immediate shutdown

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        program: Path,
        backend: Cluster,
        pool_mode: str = "transaction",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__("pgbouncer", directory, port)
        self.program = program
        self.backend = backend
        self.pool_mode = pool_mode
        self.settings = dict(settings or {})
        self.config_path = directory / "pgbouncer.ini"

    def url(self, driver: str = "psycopg", database: str = "postgres", **query: str) -> URL:
        """A SQLAlchemy URL that goes through this PgBouncer."""
        return self.backend.url(driver, database, **query).set(port=self.port)

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string that goes through this PgBouncer."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit psycopg connection through PgBouncer (never prepares)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("prepare_threshold", None)
        return psycopg.connect(self.conninfo(database), **kwargs)

    def write_config(self) -> None:
        """Write ``pgbouncer.ini`` and its ``userlist.txt`` from the current attributes."""
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.directory / "userlist.txt"),
            "admin_users": "postgres",
            "pool_mode": self.pool_mode,
            "max_client_conn": "500",
            "default_pool_size": "20",
            "ignore_startup_parameters": "extra_float_digits",
            "logfile": str(self.log_path),
            "log_connections": "0",
            "log_disconnections": "0",
            **self.settings,
        }
        backend = f"host=127.0.0.1 port={self.backend.port}"
        lines = ["[databases]", f"* = {backend}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        self._write(self.directory / "userlist.txt", '"postgres" ""\n')
        self._write(self.config_path, "\n".join(lines) + "\n")

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        user = _server_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _command(self) -> list[str]:
        return [str(self.program), "-q", str(self.config_path)]

    def start(self, *, timeout: float = 15) -> None:
        """Start PgBouncer (as a non-root user) and wait until a query goes through it."""
        self.write_config()
        self._spawn()

        def answers() -> bool:
            if not self.is_running:
                raise ClusterError(f"{self!r} exited while starting\n{self.log_tail()}")
            try:
                with self.connect(connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
            except psycopg.OperationalError:
                return False
            return True

        _wait_until(answers, timeout, f"{self!r} to route a query", self.log_tail)

    def stop(self, *, timeout: float = 10) -> None:
        """Shut PgBouncer down at once (SIGTERM): client connections are closed."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run a command on PgBouncer's admin console (``SHOW POOLS``, ``RELOAD``, ``PAUSE``)."""
        # the console speaks only the simple query protocol: a ClientCursor uses it
        with self.connect("pgbouncer", cursor_factory=psycopg.ClientCursor) as console:
            cursor = console.execute(command)
            return list(cursor.fetchall()) if cursor.description else []

    def point_at(self, cluster: Cluster) -> None:
        """Send the next transactions to ``cluster``: rewrite the config, ``RELOAD`` it.

        PgBouncer closes its server connections to the old backend as they are released.
        """
        self.backend = cluster
        self.write_config()
        if self.is_running:
            self.admin("RELOAD")


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
        self.servers: list[_Server] = []
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
            ClusterError: It did not start.
        """
        bin_dir = self._find(postgres_bin_dir)
        self._find(_server_user)
        template = _template_data_dir(bin_dir)
        cluster = Cluster(
            name,
            _make_dir(name),
            free_port(),
            bin_dir=bin_dir,
            settings=settings or {},
        )
        self.servers.append(cluster)
        _run(["cp", "-a", template, cluster.data_dir], cluster.directory)
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
            _make_dir(name),
            free_port(),
            bin_dir=primary.bin_dir,
            settings=primary.settings if settings is None else settings,
            upstream=primary,
        )
        self.servers.append(cluster)
        _run(
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
        _wait_until(
            lambda: primary.replication().get(cluster.application_name, ("",))[0] == "streaming",
            timeout,
            f"{cluster!r} to stream from {primary!r}",
            cluster.log_tail,
        )
        if synchronous:
            primary.set_synchronous_standbys(
                [*primary.synchronous_standbys, cluster.application_name]
            )
            _wait_until(
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
            _make_dir("pgbouncer"),
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
        directory = _make_dir("template")
        data = directory / "data"
        try:
            _run(
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
        return data


# ---------------------------------------------------------------------------------------------
# The backstop: whatever is still running when the interpreter exits is stopped and removed.

_live: set[_Server] = set()


@atexit.register
def _close_everything() -> None:
    for server in sorted(_live, key=lambda s: s.kind != "pgbouncer"):
        with contextlib.suppress(Exception):
            server.close()
    for data in _templates.values():
        shutil.rmtree(data.parent, ignore_errors=True)
