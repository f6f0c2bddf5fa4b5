"""Run PgBouncer in front of a throwaway cluster for the topology tests."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import URL

from tests._servers import Server, ServerError, ToolMissingError, server_user, wait_until

if TYPE_CHECKING:
    from tests.clusters import Cluster

__all__ = ["PgBouncer", "pgbouncer_path"]


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


class PgBouncer(Server):
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
        user = server_user()
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
                raise ServerError(f"{self!r} exited while starting\n{self.log_tail()}")
            try:
                with self.connect(connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
            except psycopg.OperationalError:
                return False
            return True

        wait_until(answers, timeout, f"{self!r} to route a query", self.log_tail)

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
