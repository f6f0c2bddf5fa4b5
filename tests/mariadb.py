"""Run a throwaway MariaDB server of the test's own (to freeze it): never the shared 3306 one.

``mariadb-install-db`` fills a data directory in a temporary directory (``/dev/shm`` where
there is one; about 2 s), then ``mariadbd`` serves it on a free 127.0.0.1 port with a small
buffer pool, user ``root`` without a password. Run as root, both run as the servers' OS user
(tests/_servers.py). :meth:`MariaDB.close` stops it and removes the directory.

Example:
    >>> server = MariaDB.create()
    >>> server.execute("CREATE TABLE t (id int)")
    >>> with server.frozen():
    ...     ...  # every connection stops answering
    >>> server.close()
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pymysql
from sqlalchemy import URL

from tests._servers import (
    Server,
    ServerError,
    ToolMissingError,
    free_port,
    make_dir,
    run_program,
    wait_until,
)


def _program(name: str) -> Path:
    found = shutil.which(name) or next(
        (
            str(path)
            for path in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
            if path.exists()
        ),
        None,
    )
    if found is None:
        raise ToolMissingError(f"{name} is not installed", "apt-get install mariadb-server")
    return Path(found)


class MariaDB(Server):
    """One MariaDB server with a database ``test``, on its own port; running when created."""

    kind = "mariadb"

    def __init__(self, directory: Path, port: int, *, program: Path) -> None:
        super().__init__("mariadb", directory, port)
        self.program = program

    @classmethod
    def create(cls) -> MariaDB:
        """Install a data directory, start the server and create the database ``test``.

        Raises:
            ToolMissingError: ``mariadbd`` or ``mariadb-install-db`` is not installed.
        """
        program = _program("mariadbd")
        install = _program("mariadb-install-db")
        directory = make_dir("mariadb")
        server = cls(directory, free_port(), program=program)
        try:
            run_program(
                [
                    install,
                    "--no-defaults",
                    f"--datadir={directory / 'data'}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ],
                directory,
            )
            server.start()
            server.execute("CREATE DATABASE test")
        except BaseException:
            server.close()
            raise
        return server

    def url(self, driver: str = "pymysql", database: str = "test") -> URL:
        """A SQLAlchemy URL for this server, e.g. ``mysql+pymysql://root@127.0.0.1:port/test``."""
        return URL.create(
            f"mysql+{driver}", username="root", host="127.0.0.1", port=self.port, database=database
        )

    def execute(self, sql: str, database: str | None = None) -> None:
        """Run one statement on a new autocommit connection."""
        connection = pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    def _command(self) -> list[str]:
        return [
            str(self.program),
            "--no-defaults",
            f"--datadir={self.directory / 'data'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.directory / 'mysqld.sock'}",
            f"--pid-file={self.directory / 'mysqld.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
        ]

    def start(self, *, timeout: float = 30) -> None:
        """Start ``mariadbd`` and wait until it answers."""
        self._spawn()

        def answers() -> bool:
            if not self.is_running:
                raise ServerError(f"{self!r} exited while starting\n{self.log_tail()}")
            try:
                self.execute("SELECT 1")
            except pymysql.err.OperationalError:
                return False
            return True

        wait_until(answers, timeout, f"{self!r} to answer", self.log_tail)

    def stop(self, *, timeout: float = 30) -> None:
        """Shut the server down (SIGTERM: a normal shutdown)."""
        self._signal_and_wait(signal.SIGTERM, timeout)
