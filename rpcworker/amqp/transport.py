"""The one seam between rpcworker and kombu / py-amqp internals.

``Capabilities`` says what a connection's transport can do, computed once per
connection from kombu's ``driver_type``: every "is this py-amqp?" question in the
engine and the client reads it instead of sniffing attributes.

Every use of a private or undocumented kombu / py-amqp API lives here, each with
the upstream behaviour that forces it; ruff's SLF001 keeps it so (this module is its
one exception for kombu and py-amqp). The other third-party internals rpcworker
touches are oslo.config's option lookup (``config.conffile``) and cotyledon's signal
hook (``daemon.supervisor``), each with its reason where it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import time
import uuid
from collections.abc import Callable
from queue import Empty
from typing import Any

import kombu
from amqp import spec
from amqp.exceptions import RecoverableConnectionError
from kombu.exceptions import ChannelError
from kombu.transport import filesystem, pyamqp
from kombu.utils import json as kombu_json

from rpcworker.amqp.readahead import ReadAhead

AMQP = "amqp"
FILESYSTEM = "filesystem"


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the transport of one connection can do."""

    driver: str
    #: py-amqp on a socket: the loop select()s on it, reads frame by frame, batches
    #: acks (basic.ack multiple) and publishes replies with basic_publish directly
    amqp: bool
    #: a retry can wait in a delay queue (py-amqp: x-message-ttl; memory://: the test kit
    #: plays the TTL). Not on filesystem://, which has no TTL: failures dead-letter.
    delay_queues: bool
    #: basic.return reaches us (mandatory publishes that no queue took come back)
    returns: bool
    #: the broker can block the connection (connection.blocked / unblocked)
    blocking: bool

    @classmethod
    def of(cls, conn: kombu.Connection) -> Capabilities:
        driver = str(getattr(conn.transport, "driver_type", ""))
        amqp = driver == AMQP
        return cls(
            driver=driver,
            amqp=amqp,
            delay_queues=driver != FILESYSTEM,
            returns=driver != FILESYSTEM,
            blocking=amqp,
        )


def describe(conn: kombu.Connection) -> str:
    """Where ``conn`` goes, for the log (the password masked)."""
    if Capabilities.of(conn).driver == FILESYSTEM:
        folder = (conn.transport_options or {}).get("data_folder_in", "")
        return f"filesystem:// (no broker: kombu's filesystem transport in {folder})"
    return str(conn.as_uri())


# -- consuming on py-amqp ----------------------------------------------------------------


def install_readahead(amqp_connection: Any) -> ReadAhead | None:
    """Serve py-amqp's frame reads from one large recv(); None when not plain TCP.

    py-amqp's ``TCPTransport`` reads every frame as three exact-size ``recv()`` calls
    through its private ``_quick_recv`` (amqp/transport.py ``_read``), and offers no
    hook for the read function: about nine system calls per delivery otherwise."""
    transport: Any = getattr(amqp_connection, "transport", None)
    if type(transport).__name__ != "TCPTransport" or not hasattr(transport, "_quick_recv"):
        return None
    if getattr(transport, "_read_buffer", b""):
        return None  # a partial frame is already buffered by py-amqp: leave it alone
    reader = ReadAhead(transport.sock)
    transport._quick_recv = reader.recv
    return reader


def frame_reader(
    amqp_connection: Any, reader: ReadAhead | None = None
) -> Callable[[float | None], Any]:
    """One frame read and dispatched, blocking: py-amqp's ``Connection.blocking_read``
    without its ``having_timeout`` context manager (a generator set up and torn down per
    frame, for a timeout the loop never gives), and with a frame already whole in
    ``reader``'s buffer cut from it at once.

    ``drain_events(timeout=0)``, the documented way, sets and resets the socket timeout
    on every call (two system calls per frame) and ``drain_events(None)`` can block on a
    heartbeat frame; the loop calls this only when the socket (or the read-ahead buffer)
    has bytes. The frame goes to the connection's ``on_inbound_frame`` (set once it is
    connected), as ``blocking_read`` does."""
    transport = amqp_connection.transport
    read_frame = transport.read_frame
    on_frame = amqp_connection.on_inbound_frame
    cut = reader.frame if reader is not None else None

    def read(timeout: float | None = None) -> Any:
        # py-amqp keeps a partial frame of its own only after a read timed out
        frame = None if cut is None or transport._read_buffer else cut()
        return on_frame(frame if frame is not None else read_frame())

    return read


#: publish(message, exchange, routing_key, mandatory) on one py-amqp channel
Publish = Callable[[Any, str, str, bool], None]


def publisher(channel: Any) -> Publish:
    """``basic.publish`` on a py-amqp channel, as ``Channel.basic_publish`` sends it, but
    for what that method does first on every call when the connection advertises the
    ``connection.blocked`` capability (kombu's connections do): ``drain_events(timeout=0)``,
    a read with the socket's timeout set to 0 and back that ends in a caught
    ``socket.timeout`` (amqp/channel.py ``_basic_publish``). Measured: 130 µs of a reply's
    450 µs through the worker. It also read and dispatched a frame in the middle of a
    publish; the loop reads every frame itself, ``connection.blocked`` included
    (``Settle.on_blocked``)."""
    send_method = channel.send_method
    method = spec.Basic.Publish

    def publish(message: Any, exchange: str, routing_key: str, mandatory: bool) -> None:
        if not channel.connection:
            raise RecoverableConnectionError("basic_publish: connection closed")
        send_method(method, "Bssbb", (0, exchange, routing_key, mandatory, False), message)

    return publish


def prepare_consuming_channel(channel: Any) -> None:
    """Bodies stay bytes and a ``compression`` header is never acted on.

    py-amqp decodes a body with the codec the message names unless the channel's
    ``auto_decode`` is off, and kombu's ``pyamqp.Message`` inflates a body with a
    ``compression`` header in its constructor (no option to turn it off): a body that did
    not inflate raised in the consumer loop, one that did (a zip bomb) was inflated in
    memory before anything could refuse it. ``Channel.Message`` is the class kombu builds
    deliveries with (kombu/transport/pyamqp.py)."""
    if isinstance(channel, pyamqp.Channel):
        channel.auto_decode = False
        channel.Message = _UninflatedMessage


class _UninflatedMessage(pyamqp.Message):
    """kombu's AMQP message, its attributes set directly: its body as received (never
    inflated by a ``compression`` header: ``decoding.decode`` refuses compressed bodies)
    and its headers as sent. kombu's constructor chain (pyamqp.Message -> base Message)
    also builds an ``errors`` list per message and checks for compression and
    ``postencode``: none of which a consumer of bytes needs."""

    def __init__(self, msg: Any, channel: Any = None, **kwargs: Any) -> None:
        props = msg.properties
        self.channel = channel
        self.delivery_tag = msg.delivery_tag
        self.content_type = props.get("content_type")
        self.content_encoding = props.get("content_encoding")
        self.delivery_info = msg.delivery_info
        self.headers = props.get("application_headers") or {}
        self.properties = props
        self._decoded_cache = None
        self._state = "RECEIVED"
        self.accept = kwargs.get("accept")
        self.body = msg.body


def delivery_info(message: Any) -> dict[str, Any]:
    """``message.delivery_info`` with ``redelivered`` always set.

    kombu's virtual transports (memory://) keep the flag only in the raw payload dict,
    ``Message._raw`` (kombu/transport/virtual/base.py). (Never ``message.payload``: it
    runs kombu's deserializers.)"""
    info = dict(getattr(message, "delivery_info", None) or {})
    if "redelivered" not in info:
        raw = getattr(message, "_raw", None)
        info["redelivered"] = bool(isinstance(raw, dict) and raw.get("redelivered"))
    return info


# -- the test kit on memory:// -------------------------------------------------------------


def move_messages(channel: Any, source: str, target: str) -> int:
    """Move every message of ``source`` to the tail of ``target`` unchanged, as a delay
    queue's TTL does on RabbitMQ; kombu virtual channels only (memory://).

    The virtual channel's ``_get`` / ``_put`` move the stored payload as it is (headers,
    properties, delivery info); a ``basic_get`` + publish would build a new message."""
    moved = 0
    while True:
        try:
            raw = channel._get(source)
        except Empty:
            return moved
        channel._put(target, raw)
        moved += 1


# -- connections ---------------------------------------------------------------------------


class Connection(kombu.Connection):
    """kombu.Connection that verifies each broker host against its own name, starts a
    failover where the last session left off, and says which host an attempt was for.

    Stock kombu (5.x, py-amqp transport) fills a ``server_hostname`` of None *in place*
    in the ``ssl`` dict, from the first host it connects to, and only after turning
    ``localhost`` into ``127.0.0.1``: a certificate for ``localhost`` then fails as an
    IP address mismatch, and after a failover the next host is checked against the first
    host's name. Here every ``_init_params()`` (construction, ``switch()`` to the next
    failover host, ``clone()``) gets its own copy of the dict whose ``server_hostname``
    is the name of the host being connected to, exactly as written in the URL. kombu has
    no public hook for either, so the private ``_init_params`` and
    ``_establish_connection`` are overridden.
    """

    #: the entry of ``alt`` (a host URL) this connection is set to connect to
    current: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: kombu keeps the name only privately (``_failover_strategy``)
        self.strategy_name = str(kwargs.get("failover_strategy") or "round-robin")
        if self.alt:
            first = args[0] if args else kwargs.get("hostname")
            self.current = first if first in self.alt else self.alt[0]

    def switch(self, conn_str: str) -> None:
        super().switch(conn_str)
        self.current = conn_str

    def failover_clone(self, after: str | None = None) -> Connection:
        """A new, unconnected copy for the next session, ``after`` being the host (an
        entry of ``alt``) the lost session was connected to.

        round-robin: the first attempt goes to the host after ``after`` in the
        configured order (the lost one is tried last), then on round the list.
        shuffle: the first attempt goes to a random host other than ``after`` (at the
        first start, to any host: workers sharing one transport_url spread over the
        cluster), then random ones. kombu alone restarts every session at the first
        host: after losing the first node, every reconnect began with a dead host (with a
        black-holed one, a connect timeout each time).
        """
        hosts = list(self.alt)
        if len(hosts) < 2:
            return self.clone()
        shuffle = self.strategy_name == "shuffle"
        if shuffle:
            first = random.choice([i for i, url in enumerate(hosts) if url != after])
        else:
            first = (hosts.index(after) + 1) % len(hosts) if after in hosts else 0
        clone: Connection = self.clone(hostname=hosts[first])
        if not shuffle:
            for _ in range(first):  # kombu's round-robin cycle is set to go to alt[1] next
                next(clone.cycle)  # type: ignore[arg-type]
        return clone

    def _init_params(self, *args: Any, **params: Any) -> None:
        tls = params.get("ssl")
        if isinstance(tls, dict) and "server_hostname" in tls:
            params["ssl"] = dict(tls, server_hostname=params.get("hostname") or None)
        super()._init_params(*args, **params)

    def _establish_connection(self) -> Any:
        uri = self.as_uri()  # before py-amqp rewrites localhost to 127.0.0.1
        try:
            return super()._establish_connection()
        except Exception as exc:
            with contextlib.suppress(AttributeError, TypeError):
                exc._rpcworker_broker = uri  # type: ignore[attr-defined]
            raise


def session_clone(conn: kombu.Connection, after: str | None) -> kombu.Connection:
    """An unconnected copy of ``conn`` for a new session (see ``failover_clone``)."""
    if isinstance(conn, Connection):
        return conn.failover_clone(after)
    return conn.clone()


def attempted(exc: BaseException, conn: kombu.Connection) -> str:
    """The masked URL of the host a failed connection attempt was for (``conn``'s when
    the exception does not say: it did not come from a ``Connection``)."""
    uri = getattr(exc, "_rpcworker_broker", None)
    return uri if isinstance(uri, str) else str(conn.as_uri())


class _FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel with two of its races closed (its private
    ``_queue_bind`` / ``_delete`` / ``_put`` are the only places to do it).

    kombu creates a binding table file with ``open("wb")`` before locking it: two workers
    binding to the same new exchange at once each wrote a table holding only their own
    binding (a fanout then reached one of them), and a reader could see the truncated
    file. Here the tables are guarded by one lock file."""

    def _table_lock(self, mode: int) -> Any:
        return _flock(os.path.join(str(self.control_folder), ".lock"), mode)

    def get_table(self, exchange: str) -> Any:
        with self._table_lock(fcntl.LOCK_SH):
            return super().get_table(exchange)

    def _queue_bind(self, *args: Any) -> Any:
        with self._table_lock(fcntl.LOCK_EX):
            return super()._queue_bind(*args)

    def _delete(self, *args: Any, **kwargs: Any) -> Any:
        with self._table_lock(fcntl.LOCK_EX):
            return super()._delete(*args, **kwargs)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """kombu writes a message file in place, so a consumer could take and read it
        before the bytes were in (an empty file: JSONDecodeError in the consumer). Here
        it is written under a name no consumer looks at, then renamed into place."""
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(kombu_json.dumps(message).encode("utf-8"))
            os.rename(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class _FilesystemTransport(filesystem.Transport):
    Channel = _FilesystemChannel


@contextlib.contextmanager
def _flock(path: str, mode: int) -> Any:
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def filesystem_connection(queues: str, exchanges: str) -> kombu.Connection:
    """kombu's filesystem transport (with the races above closed): messages are files in
    ``queues``, exchange bindings in ``exchanges``."""
    # a host name only to keep kombu from warning that none was given
    return kombu.Connection(
        "localhost",
        transport=_FilesystemTransport,
        transport_options={
            "data_folder_in": queues,
            "data_folder_out": queues,
            "control_folder": exchanges,
        },
    )
