"""The seam's fast paths on py-amqp: the read-ahead buffer, frames cut from it, and
basic.publish without py-amqp's drain before each publish."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from amqp.exceptions import RecoverableConnectionError

from rpcworker.amqp.readahead import ReadAhead


def test_serves_small_reads_from_one_large_recv() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"0123456789" * 10)
        calls = []
        reader = ReadAhead(a)
        original = reader._sock_recv

        def counting(n: int) -> bytes:
            calls.append(n)
            return original(n)

        reader._sock_recv = counting
        got = reader.recv(7) + reader.recv(50) + reader.recv(1)
        assert got == (b"0123456789" * 10)[:58]
        assert len(calls) == 1 and reader.pending() == 42
        assert reader.recv(100) == (b"0123456789" * 10)[58:]  # the rest, no new recv
        assert len(calls) == 1 and reader.pending() == 0
    finally:
        a.close()
        b.close()


def test_eof_and_timeouts_pass_through() -> None:
    a, b = socket.socketpair()
    reader = ReadAhead(a)
    a.settimeout(0.01)
    with pytest.raises(TimeoutError):
        reader.recv(5)
    b.sendall(b"xy")
    b.close()
    assert reader.recv(5) == b"xy"
    assert reader.recv(5) == b""  # EOF, as socket.recv says it
    a.close()


def frame(frame_type: int, channel: int, payload: bytes, end: int = 206) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def test_whole_frames_are_cut_from_the_buffer_and_the_rest_left_to_py_amqp() -> None:
    """``frame()`` cuts each frame that is whole and well formed in the buffer; a partial
    one, or one without its frame-end octet, is left for py-amqp's ``read_frame`` to read
    (and refuse) through ``recv``, from the same position."""
    a, b = socket.socketpair()
    try:
        first, second = frame(1, 1, b"method"), frame(3, 1, b"body" * 10)
        bad = frame(2, 1, b"header", end=0)
        b.sendall(first + second + bad[:5])
        reader = ReadAhead(a)
        assert reader.frame() is None  # nothing read from the socket yet
        assert reader.recv(1) == first[:1]  # py-amqp reads a byte: one large recv
        assert reader.recv(len(first) - 1) == first[1:]
        assert reader.frame() == (3, 1, b"body" * 10)
        assert reader.frame() is None  # five bytes of the next frame: partial
        assert reader.recv(5) == bad[:5]
        b.sendall(bad[5:])
        assert reader.recv(len(bad) - 5) == bad[5:]  # py-amqp reads it (and refuses it)
        b.sendall(bad)
        reader.recv(1)
        reader._pos = 0
        assert reader.frame() is None  # frame end 0, not 206: py-amqp's to refuse
        assert reader.recv(len(bad)) == bad
    finally:
        a.close()
        b.close()


def test_py_amqp_reads_the_same_frames_through_the_fast_path() -> None:
    """A py-amqp transport reading from a ReadAhead, frames cut by ``frame_reader``:
    the same (type, channel, payload) py-amqp's own ``read_frame`` gives."""
    from amqp.transport import TCPTransport

    from rpcworker.amqp import transport as seam

    a, b = socket.socketpair()
    try:
        frames = [frame(1, 1, b"m" * n) for n in (0, 1, 300, 70000)] + [frame(8, 0, b"")]
        b.sendall(b"".join(frames))
        t = TCPTransport.__new__(TCPTransport)
        t.sock, t._read_buffer, t.raise_on_initial_eintr = a, b"", True
        t.connected = True
        reader = ReadAhead(a)
        t._quick_recv = reader.recv
        seen: list[tuple[int, int, bytes]] = []

        class Conn:
            transport = t

            def on_inbound_frame(self, f: tuple[int, int, bytes]) -> None:
                seen.append(f)

        conn = Conn()
        read = seam.frame_reader(conn, reader)
        for _ in frames:
            read(None)
        assert [(ft, ch, len(p)) for ft, ch, p in seen] == [
            (1, 1, 0),
            (1, 1, 1),
            (1, 1, 300),
            (1, 1, 70000),
            (8, 0, 0),
        ]
    finally:
        a.close()
        b.close()


def test_the_publisher_sends_basic_publish_without_draining_first() -> None:
    """``transport.publisher`` sends the same basic.publish method as py-amqp's
    ``basic_publish``, and never reads from the connection first."""
    from rpcworker.amqp import transport as seam

    sent: list[tuple[Any, ...]] = []

    class Conn:
        def drain_events(self, timeout: float | None = None) -> None:
            raise AssertionError("a publish must not read from the connection")

    class Channel:
        connection = Conn()

        def send_method(self, *args: Any) -> None:
            sent.append(args)

    publish = seam.publisher(Channel())
    publish("msg", "ex", "key", True)
    [(method, argsig, args, message)] = sent
    assert (method, argsig, args, message) == (
        (60, 40),
        "Bssbb",
        (0, "ex", "key", True, False),
        "msg",
    )
    Channel.connection = None  # type: ignore[assignment]
    with pytest.raises(RecoverableConnectionError):
        publish("msg", "ex", "key", True)
