"""One connection's I/O: wait on the broker socket and the executor's wake-up pipe
together, read what the broker sent, keep heartbeats going. Loop thread only.

py-amqp: ``select()`` on both file descriptors, then frames are read one at a time while
the socket (or the read-ahead buffer) has data, with no wait between them. Virtual
transports (memory://, filesystem://) have no socket: they are polled.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import kombu
from oslo_log import log as logging

from rpcworker.amqp import broker, transport
from rpcworker.amqp.transport import Capabilities
from rpcworker.engine.events import Listener
from rpcworker.engine.settle import Settle
from rpcworker.engine.telling import Teller

#: most broker events handled in one go before completions get a turn
DRAIN_BATCH = 256
#: seconds between two heartbeat checks (py-amqp sends heartbeats only when asked, at
#: least twice per heartbeat interval)
HEARTBEAT_CHECK_EVERY = 0.5
#: longest wait of a virtual transport's poll
_POLL = 0.01

LOG = logging.getLogger(__name__)


def log_connection_error(exc: BaseException, conn: kombu.Connection, interval: float) -> None:
    """One line for a failed connection attempt: the host, the error, the next try."""
    args = (transport.attempted(exc, conn), broker.explain(exc), interval)
    # kombu calls this inside its except block, and oslo.log appends the exception
    # being handled to a line logged there: log from a thread that handles none
    t = threading.Thread(
        target=LOG.warning,
        name="rpcworker-log",
        args=("Cannot connect to the broker at %s: %s; next attempt in %.1f s", *args),
    )
    t.start()
    t.join()


class Session:
    def __init__(
        self, conn: kombu.Connection, wake_fd: int, events: Listener, teller: Teller
    ) -> None:
        self.conn = conn
        self.caps = Capabilities.of(conn)
        self.settle = Settle(conn, self.caps, events, teller)
        self._wake_fd = wake_fd
        self._last_heartbeat_check = 0.0
        amqp_conn = conn.connection
        if self.caps.blocking:
            amqp_conn.on_blocked = self.settle.on_blocked
            amqp_conn.on_unblocked = self.settle.on_unblocked
        self._amqp = amqp_conn
        self._sock = getattr(amqp_conn, "sock", None) if self.caps.amqp else None
        self._buffered: Callable[[], int] | None = None
        self._read_frame: Callable[[float | None], Any] | None = None
        if self._sock is not None:
            reader = transport.install_readahead(amqp_conn)
            # bytes already read (ReadAhead, or TLS-decrypted) are invisible to select()
            self._buffered = (
                reader.pending if reader is not None else getattr(self._sock, "pending", None)
            )
            self._read_frame = transport.frame_reader(amqp_conn, reader)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the broker or a finished handler, and handle what
        the broker sent. Raises the connection's errors when it is lost."""
        sock = self._sock
        if sock is None:
            self._poll(timeout)
            return
        if self._amqp.sock is None:
            raise ConnectionError("socket closed")
        buffered = self._buffered
        if buffered is not None and buffered():
            readable = [sock]  # bytes already read: select() cannot see them
        else:
            try:
                readable, _, _ = select.select([sock, self._wake_fd], [], [], timeout)
            except InterruptedError:
                readable = []
        if sock in readable:
            self._drain_socket(sock, buffered)

    def _drain_socket(self, sock: Any, buffered: Callable[[], int] | None) -> None:
        """Read what the socket has, one frame at a time (blocking: the socket is
        readable, so it returns at once; a frame split across packets is waited for),
        polling the socket again without waiting between frames."""
        poll = select.select
        read_frame = self._read_frame
        assert read_frame is not None
        for _ in range(DRAIN_BATCH * 3):  # about three frames per delivery
            read_frame(None)
            if not (buffered is not None and buffered()) and not poll([sock], [], [], 0)[0]:
                return

    def _poll(self, timeout: float) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                self.conn.drain_events(timeout=0)
            except TimeoutError:
                break
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_fd], [], [], min(timeout, _POLL))

    def heartbeat(self) -> bool:
        """Check heartbeats when due; whether they were (a tick for periodic work)."""
        now = time.monotonic()
        if now - self._last_heartbeat_check < HEARTBEAT_CHECK_EVERY:
            return False
        self._last_heartbeat_check = now
        self.conn.heartbeat_check()
        return True
