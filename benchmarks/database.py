"""Create, seed, inspect and drop the benchmark's own PostgreSQL database (``bench_<pid>``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

SEED_ROWS = 1000
SEED_SQL = "INSERT INTO items (name, price) SELECT 'item-' || n, n FROM generate_series(1, %s) n"
# pg_stat_force_next_flush() is only honoured when the backend has pending table statistics
# (pgstat_report_stat returns early otherwise, database counters included): hence the scan.
FLUSH_SQL = "SELECT pg_stat_force_next_flush(), (SELECT 1 FROM pg_catalog.pg_namespace LIMIT 1)"
SCHEMA_SQL = (
    "CREATE TABLE items (id serial PRIMARY KEY, name varchar(50) NOT NULL, price integer NOT NULL)"
)


@dataclass(frozen=True)
class Server:
    """Where PostgreSQL listens (BENCH_PG_HOST / BENCH_PG_PORT / BENCH_PG_USER override it)."""

    host: str = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
    port: int = int(os.environ.get("BENCH_PG_PORT", "5432"))
    user: str = os.environ.get("BENCH_PG_USER", "postgres")
    admin_database: str = os.environ.get("BENCH_PG_ADMIN_DATABASE", "postgres")

    def conninfo(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    def env(self, database: str) -> dict[str, str]:
        """The BENCH_PG_* variables the apps read (see apps/common.py)."""
        return {
            "BENCH_PG_HOST": self.host,
            "BENCH_PG_PORT": str(self.port),
            "BENCH_PG_USER": self.user,
            "BENCH_PG_DATABASE": database,
        }


def reachable(server: Server) -> str | None:
    """Return None if the server answers, else the reason it does not."""
    try:
        with psycopg.connect(server.conninfo(server.admin_database), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


@contextmanager
def bench_database(server: Server) -> Iterator[str]:
    """Create ``bench_<pid>`` with a seeded ``items`` table; drop it afterwards, come what may."""
    name = f"bench_{os.getpid()}"
    with psycopg.connect(server.conninfo(server.admin_database), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(server.conninfo(name), autocommit=True) as connection:
            connection.execute(SCHEMA_SQL)
            connection.execute(SEED_SQL, (SEED_ROWS,))
        yield name
    finally:
        with psycopg.connect(server.conninfo(server.admin_database), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(f"DROP DATABASE IF EXISTS {name}")


class Inspector:
    """Look at the benchmark database from outside the apps: what is really committed."""

    def __init__(self, server: Server, database: str) -> None:
        self._database = database
        self._connection = psycopg.connect(server.conninfo(database), autocommit=True)
        # Reads the server's statistics from another database, so that reading adds nothing.
        self._admin = psycopg.connect(server.conninfo(server.admin_database), autocommit=True)
        self._own_flushes = 0

    def close(self) -> None:
        self._connection.close()
        self._admin.close()

    def transactions(self) -> int | None:
        """Transactions the benchmark database has committed or rolled back so far.

        The server's statistics (``xact_commit + xact_rollback`` of ``pg_stat_database``) are
        flushed by each backend on its own schedule; this inspector's own connection flushes
        first (``FLUSH_SQL``, one transaction, left out of the count), the
        apps' connections are flushed by ``driver_calls.py``. None before PostgreSQL 15.
        """
        try:
            self._connection.execute(FLUSH_SQL)
        except psycopg.errors.UndefinedFunction:
            return None
        self._own_flushes += 1
        row = self._admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (self._database,),
        ).fetchone()
        return int(row[0]) - self._own_flushes if row else None

    def server_version(self) -> str:
        row = self._connection.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"

    def count(self) -> int:
        row = self._connection.execute("SELECT count(*) FROM items").fetchone()
        return int(row[0]) if row else 0

    def row(self, item_id: int) -> dict[str, object] | None:
        row = self._connection.execute(
            "SELECT id, name, price FROM items WHERE id = %s", (item_id,)
        ).fetchone()
        return None if row is None else {"id": row[0], "name": row[1], "price": row[2]}

    def first_rows(self, limit: int) -> list[dict[str, object]]:
        rows = self._connection.execute(
            "SELECT id, name, price FROM items ORDER BY id LIMIT %s", (limit,)
        ).fetchall()
        return [{"id": r[0], "name": r[1], "price": r[2]} for r in rows]

    def vacuum(self) -> None:
        """Keep the table small and its statistics fresh between rounds (writes pile up rows)."""
        self._connection.execute("DELETE FROM items WHERE id > %s", (SEED_ROWS,))
        self._connection.execute("VACUUM ANALYZE items")
