"""Run a server program for the topology tests: as the server OS user, in a directory of its own.

When we are root, programs run as the ``postgres`` OS user (initdb, postgres and pgbouncer
refuse root). Each server gets a temporary directory (``temp_root``) that it works in, so
``processes_under`` finds all its processes, orphans included. ``Server.close`` stops it,
kills what is left and removes the directory; an ``atexit`` hook (and a SIGTERM handler)
closes every server still open when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# Ports never handed out: the machine's shared servers and their usual neighbours.
RESERVED_PORTS = frozenset({5432, 5433, 6432, 3306})


class ToolMissingError(RuntimeError):
    """A program the harness needs is not installed.

    Args:
        message: What is missing.
        hint: How to install it, e.g. ``"apt-get install pgbouncer"``.
    """

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message}; to enable these tests: {hint}")
        self.hint = hint


class ServerError(RuntimeError):
    """A server did not start, stop or answer in time; the message ends with its log."""


_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1 that this process has not handed out before."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in RESERVED_PORTS and port not in _ports_given:
                _ports_given.add(port)
                return port


def server_user() -> pwd.struct_passwd | None:
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


def as_server_user(cwd: Path) -> dict[str, Any]:
    """``subprocess`` arguments that run a program as the server user, in ``cwd``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", HOME=str(cwd), PGPASSFILE="/dev/null")
    kwargs: dict[str, Any] = {"cwd": cwd, "env": env}
    user = server_user()
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return kwargs


def run_program(args: Sequence[str | Path], cwd: Path, *, timeout: float = 60) -> None:
    """Run a program as the server user; raise :class:`ServerError` with its output if it fails."""
    result = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        **as_server_user(cwd),
    )
    if result.returncode != 0:
        raise ServerError(
            f"{Path(str(args[0])).name} exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


def temp_root() -> str | None:
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


def make_dir(prefix: str) -> Path:
    """A new temporary directory the server user owns."""
    path = Path(tempfile.mkdtemp(prefix=f"fdbs-{prefix}-", dir=temp_root()))
    user = server_user()
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


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]
) -> None:
    """Poll ``condition`` every 10 ms; after ``timeout`` s raise, quoting ``log()``."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:g} s waiting for {what}\n{log()}")
        time.sleep(0.01)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, headed by its path."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path}:\n" + "\n".join(text.splitlines()[-lines:])


class Server:
    """A server process the harness started: its directory, port, log and life cycle.

    Subclasses give the command line (``_command``) and their immediate-shutdown signal.
    """

    kind = "server"
    _hard_stop_signal = signal.SIGKILL

    def __init__(self, name: str, directory: Path, port: int) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.log_path = directory / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []
        live.add(self)
        _close_on_sigterm()

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
            raise ServerError(f"{self!r} is already running")
        with self.log_path.open("ab") as log:
            user = server_user()
            if user is not None:  # the server may reopen it (PgBouncer's logfile)
                os.chown(self.log_path, user.pw_uid, user.pw_gid)
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it
                **as_server_user(self.directory),
            )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        return log_tail(self.log_path, lines)

    def processes(self) -> list[int]:
        """Every live process of this server (main process and children)."""
        return processes_under(self.directory)

    def freeze(self) -> None:
        """SIGSTOP the main process, then every child: the server stops answering, sockets open."""
        if self._frozen:
            return
        if self.pid is None:
            raise ServerError(f"cannot freeze {self!r}: it is not running")
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
            raise ServerError(
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
            with contextlib.suppress(ServerError):
                wait_until(lambda: not self.processes(), wait_for_children, "", lambda: "")
            self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # works on a stopped (frozen) process too
        with contextlib.suppress(ServerError):
            wait_until(lambda: not self.processes(), 5, "", lambda: "")

    def close(self) -> None:
        """Stop the server at once, kill anything left of it and remove its directory."""
        live.discard(self)
        with contextlib.suppress(ServerError):
            self._signal_and_wait(self._hard_stop_signal, 10)
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._kill_leftovers()
        self._release_resources()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _release_resources(self) -> None:
        """Free what the server holds outside its directory once it is gone (nothing here)."""


live: set[Server] = set()
"""Every server not closed yet: the ``atexit`` hook closes them."""

_directories_to_remove: set[Path] = set()


def remove_at_exit(directory: Path) -> None:
    """Remove ``directory`` when the interpreter exits (a cache such as initdb's template)."""
    _directories_to_remove.add(directory)
    _close_on_sigterm()


@atexit.register
def _close_everything() -> None:
    for server in sorted(live, key=lambda s: s.kind == "postgres"):  # poolers first
        with contextlib.suppress(Exception):
            server.close()
    while _directories_to_remove:
        shutil.rmtree(_directories_to_remove.pop(), ignore_errors=True)


def _close_on_sigterm() -> None:
    """Make SIGTERM (a CI timeout, ``kill``) close the servers before the process dies.

    Only while SIGTERM has its default action (which skips ``atexit``) and only from the main
    thread; the handler closes everything, then dies of SIGTERM as before.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def close_then_die(signum: int, frame: object) -> None:
        _close_everything()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, close_then_die)
