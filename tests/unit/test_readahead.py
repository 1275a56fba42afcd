from __future__ import annotations

import socket

import pytest

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
