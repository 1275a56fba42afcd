"""A small loopback TCP proxy for the functional tests (threads, bounded).

It sits between the daemon and the broker so that a test can cut the TCP link
(``kill_all()`` resets every proxied socket) or make the "broker" appear late:
the proxy binds its port at construction but only accepts connections after
``start()``; until then a connection attempt is refused (the port is bound but
not listening), exactly as for a broker that is down.

``blackhole()`` makes the link silently dead, as a network partition or a stateful
firewall dropping packets does: every proxied socket stays open on both sides but
nothing is forwarded any more, in either direction (no FIN, no RST, no error for
either peer). New connections are then accepted and held (never forwarded, never
connected upstream) until ``restore()``, after which new connections are forwarded
normally again. Black-holed connections never come back to life: they stay silent
until ``kill_all()`` or ``close()`` resets them.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from types import TracebackType

_POLL = 0.05
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST (SO_LINGER 0) rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    """One proxied connection: client socket <-> upstream socket, two pump threads."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.stop = threading.Event()
        #: set by ``TCPProxy.blackhole()``: stop forwarding, keep both sockets open
        self.held = threading.Event()
        self.rst = False
        self._lock = threading.Lock()
        self._running = 2
        self.closed = threading.Event()
        self.threads = [
            threading.Thread(
                target=self._pump, args=(client, upstream), daemon=True, name="tcpproxy-up"
            ),
            threading.Thread(
                target=self._pump, args=(upstream, client), daemon=True, name="tcpproxy-down"
            ),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.stop.is_set():
                if self.held.is_set():
                    # black-holed: read nothing (the peer's data piles up in the
                    # socket buffers), forward nothing, close nothing
                    self.stop.wait(_POLL)
                    continue
                readable, _, _ = select.select([src], [], [], _POLL)
                if not readable:
                    continue
                data = src.recv(_CHUNK)
                if not data:
                    break
                if self.held.is_set():
                    continue  # black-holed while this chunk was read: it is lost
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            self.stop.set()
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:  # the second pump to finish closes both sockets
                for sock in (self.client, self.upstream):
                    if self.rst:
                        _reset(sock)
                    else:
                        try:
                            sock.close()
                        except OSError:
                            pass
                self.closed.set()

    def kill(self) -> None:
        self.rst = True
        self.stop.set()


class TCPProxy:
    """Forward 127.0.0.1:<port> to ``target``; at most ``max_connections`` at once."""

    def __init__(self, target_host: str, target_port: int, max_connections: int = 16) -> None:
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        #: connections accepted and forwarded since construction
        self.accepted = 0
        #: while True, new connections are accepted and held, never forwarded
        self._hold_new = False
        self._held_clients: list[socket.socket] = []
        #: connections accepted and held (not forwarded) during a black-hole
        self.held_accepted = 0

    # -- control -----------------------------------------------------------------

    def start(self) -> TCPProxy:
        """Start listening and forwarding (before this, connections are refused)."""
        if self._accept_thread is None:
            self._listener.listen(self.max_connections)
            self._accept_thread = threading.Thread(
                target=self._accept_loop, daemon=True, name="tcpproxy-accept"
            )
            self._accept_thread.start()
        return self

    def active(self) -> int:
        """Proxied connections currently open."""
        with self._lock:
            self._pairs = [p for p in self._pairs if not p.closed.is_set()]
            return len(self._pairs)

    def blackhole(self, new_connections: bool = True) -> int:
        """Silently stop forwarding on every open connection, in both directions.

        The sockets stay open on both sides (no FIN, no RST): each peer only sees
        silence, so only a heartbeat (or a TCP keepalive) can tell it the link is
        dead. With ``new_connections`` (the default), connections accepted from now
        on are held too (accepted, never forwarded) until ``restore()``. Returns the
        number of proxied connections black-holed.
        """
        with self._lock:
            self._hold_new = new_connections
            pairs = [p for p in self._pairs if not p.closed.is_set()]
        for p in pairs:
            p.held.set()
        return len(pairs)

    def restore(self) -> None:
        """Forward NEW connections normally again.

        Connections black-holed earlier stay silent (their peers have given up on
        them); ``kill_all()`` or ``close()`` resets them.
        """
        with self._lock:
            self._hold_new = False

    def held(self) -> int:
        """Connections currently black-holed or held (open, not forwarding)."""
        with self._lock:
            pairs = sum(1 for p in self._pairs if p.held.is_set() and not p.closed.is_set())
            return pairs + len(self._held_clients)

    def kill_all(self, timeout: float = 5.0) -> int:
        """Reset (RST) both sides of every proxied (or held) connection; returns how many."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs = []
            held, self._held_clients = self._held_clients, []
        for p in pairs:
            p.kill()
        for sock in held:
            _reset(sock)
        for p in pairs:
            p.closed.wait(timeout)
        return len(pairs) + len(held)

    def close(self) -> None:
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        try:
            self._listener.close()
        except OSError:
            pass
        self.kill_all()

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- threads -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], _POLL)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            if self.active() + len(self._held_clients) >= self.max_connections:
                _reset(client)
                continue
            with self._lock:
                if self._hold_new:
                    # black-holed: the client's connect succeeds but nothing ever
                    # answers (no upstream connection: the broker never sees it)
                    self._held_clients.append(client)
                    self.held_accepted += 1
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(10)  # bounds sendall(); recv only runs once readable
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
                self.accepted += 1
            pair.start()
