"""One large recv() instead of three small ones per AMQP frame.

py-amqp's TCPTransport reads every frame as three exact-size recv() calls
(header, payload, frame end): about nine system calls per delivery. ``ReadAhead``
serves those reads from one recv() of up to 64 KiB, and ``frame()`` cuts a frame that
is whole in the buffer without the three reads (py-amqp's ``read_frame`` reads the rest,
and says what is wrong with a malformed frame). The consumer loop asks
``pending()`` before it select()s, since buffered bytes are invisible to select().
``transport.install_readahead`` puts it in place, on plain TCP only (TLS sockets keep
their own buffering).
"""

from __future__ import annotations

import struct
from typing import Any

SIZE = 65536
#: an AMQP frame's header: type (octet), channel (short), payload size (long)
_HEADER = struct.Struct(">BHI")
#: the octet that ends every frame
FRAME_END = 206


class ReadAhead:
    def __init__(self, sock: Any) -> None:
        self._sock_recv = sock.recv
        self._data = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes: buffered ones first, else one large recv() (which raises
        exactly what socket.recv raises: timeouts, EAGAIN, resets)."""
        data, pos = self._data, self._pos
        if pos >= len(data):
            data = self._sock_recv(max(n, SIZE))
            if len(data) <= n:  # everything asked for, or EOF (b"")
                self._data, self._pos = b"", 0
                return data
            self._data, self._pos = data, n
            return data[:n]
        end = pos + n
        self._pos = end if end < len(data) else len(data)
        return data[pos:end]

    def frame(self) -> tuple[int, int, bytes] | None:
        """The next frame (type, channel, payload) when it is whole in the buffer and
        well formed, else None (then ``read_frame`` reads it, through ``recv``)."""
        data, pos = self._data, self._pos
        if len(data) - pos < 8:
            return None
        frame_type, channel, size = _HEADER.unpack_from(data, pos)
        end = pos + 7 + size
        if end >= len(data) or data[end] != FRAME_END:
            return None
        self._pos = end + 1
        return frame_type, channel, data[pos + 7 : end]

    def pending(self) -> int:
        """Bytes received from the socket and not yet handed to py-amqp."""
        return len(self._data) - self._pos
