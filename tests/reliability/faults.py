"""Faults the reliability tests inject: a TCP proxy that cuts a connection at COMMIT.

:class:`CuttingProxy` sits between the app and a real server (PostgreSQL or MariaDB) and
forwards bytes both ways. Armed with :meth:`CuttingProxy.cut_at_commit`, it cuts the next
connection that sends ``COMMIT``:

- ``"before"``: the ``COMMIT`` never reaches the server, which rolls the transaction back when
  its client goes away;
- ``"after"``: the ``COMMIT`` reaches the server, the server commits and answers, and the
  answer is dropped with the connection: the client sees the connection die during COMMIT
  while the row is durable. That is MariaDB's ``2013 Lost connection ... during query`` at
  COMMIT, made deterministic.

:meth:`CuttingProxy.stall` stops forwarding with every connection left open: to the client,
the server stops answering (what a frozen server or a black-holed network looks like).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

CutMode = Literal["before", "after"]


class CuttingProxy:
    """A threaded TCP proxy to ``(host, port)`` on a free port of 127.0.0.1."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: CutMode | None = None
        self.cuts: dict[str, int] = {"before": 0, "after": 0}
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_at_commit(self, mode: CutMode) -> None:
        """Cut the next connection that sends COMMIT (once)."""
        with self._lock:
            self._armed = mode

    def stall(self) -> None:
        """Stop forwarding (both ways, connections stay open): a server that stops answering."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _take(self, data: bytes) -> CutMode | None:
        with self._lock:
            if self._armed is not None and b"COMMIT" in data.upper():
                mode, self._armed = self._armed, None
                self.cuts[mode] += 1
                return mode
            return None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            cut_reply = threading.Event()
            threading.Thread(
                target=self._client_to_server, args=(client, server, cut_reply), daemon=True
            ).start()
            threading.Thread(
                target=self._server_to_client, args=(server, client, cut_reply), daemon=True
            ).start()

    def _client_to_server(
        self, client: socket.socket, server: socket.socket, cut_reply: threading.Event
    ) -> None:
        try:
            while data := client.recv(65536):
                mode = self._take(data)
                if mode == "before":
                    break
                if mode == "after":
                    cut_reply.set()
                self._flowing.wait()
                server.sendall(data)
        except OSError:
            pass
        if not cut_reply.is_set():
            _close(client, server)

    def _server_to_client(
        self, server: socket.socket, client: socket.socket, cut_reply: threading.Event
    ) -> None:
        try:
            while data := server.recv(65536):
                if cut_reply.is_set():  # the server answered COMMIT: drop the answer
                    break
                self._flowing.wait()
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        for sock in self._sockets:
            _close(sock)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
