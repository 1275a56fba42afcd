"""systemd service notifications (sd_notify). Never raises.

``SystemdNotifier`` implements the interface the consumer loop calls
(``engine.readiness.Notifier``): it sends the datagrams of the notify protocol to
``$NOTIFY_SOCKET``. ``from_environment()`` picks it, or the engine's ``NullNotifier``
when not run by systemd.

No dependency: the protocol is one ``sendto()`` of ``KEY=value`` lines on an
``AF_UNIX``/``SOCK_DGRAM`` socket (sd_notify(3)). Every failure is swallowed and
logged once: a notification must never take the worker down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from oslo_log import log as logging

from rpcworker.engine.readiness import Notifier, NullNotifier

LOG = logging.getLogger(__name__)

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _one_line(text: str) -> str:
    """A STATUS= value: a newline would start another (bogus) assignment."""
    return " ".join(str(text).split())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """sd_notify(3) to ``address``: a socket path, or ``@name`` in the abstract namespace.

    ``watchdog_usec``: the service's watchdog interval ($WATCHDOG_USEC); ``watchdog()``
    sends WATCHDOG=1 at most every half of it, and nothing when it is ``None``.
    ``watchdog_pid``: the process the watchdog is meant for ($WATCHDOG_PID); another
    process (a forked child) sends no WATCHDOG=1. ``clock`` (seconds) is for tests.

    One non-blocking datagram socket, created on first use and reused. No method raises.
    """

    def __init__(
        self,
        address: str,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.watchdog_pid = watchdog_pid
        self._watchdog_every = (self.watchdog_usec or 0) / 2_000_000  # seconds
        self._clock = clock
        self._next_watchdog: float | None = None
        self._sock: socket.socket | None = None
        self._failing = False
        self._warned = False

    # -- the Notifier interface ------------------------------------------------

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        try:
            if self.watchdog_usec is None:
                return
            if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
                return
            now = self._clock()
            if self._next_watchdog is not None and now < self._next_watchdog:
                return
            self._next_watchdog = now + self._watchdog_every
            self.send("WATCHDOG=1")
        except Exception:  # never raises: not even a broken clock
            LOG.debug("sd_notify watchdog failed", exc_info=True)

    def stopping(self, status: str) -> None:
        self.send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def extend_timeout(self, seconds: float) -> None:
        try:
            usec = max(0, int(seconds * 1_000_000))
        except Exception:
            return
        self.send(f"EXTEND_TIMEOUT_USEC={usec}")

    def reloading(self) -> None:
        # MONOTONIC_USEC= tells systemd (>= 253) which reload this RELOADING=1 answers
        self.send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")

    # -- plumbing ------------------------------------------------------------------

    def send(self, message: str) -> bool:
        """Send one datagram; ``True`` when it was sent. Never raises."""
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8", "replace"), _MSG_NOSIGNAL, self._target)
        except Exception as exc:  # OSError above all; anything else must not escape either
            self._failed(message, exc)
            return False
        if self._failing:
            self._failing = False
            LOG.info("sd_notify: %s reachable again", self.address)
        return True

    def _failed(self, message: str, exc: BaseException) -> None:
        first = message.split("\n", 1)[0]
        if not self._warned:
            self._warned = True
            LOG.warning(
                "sd_notify: cannot send %s to NOTIFY_SOCKET %s: %s (further failures "
                "are logged at DEBUG)",
                first,
                self.address,
                exc,
            )
        elif not self._failing:
            LOG.debug("sd_notify: cannot send %s to %s: %s", first, self.address, exc)
        self._failing = True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        LOG.warning("sd_notify: ignoring %s=%r: not an integer", name, value)
        return None


def from_environment(environ: Mapping[str, str] | None = None) -> Notifier:
    """A ``SystemdNotifier`` when ``$NOTIFY_SOCKET`` is set (run by systemd), else ``NullNotifier``.

    The watchdog is on when ``$WATCHDOG_USEC`` is set and ``$WATCHDOG_PID`` is unset or
    this process. Never raises.
    """
    try:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return NullNotifier()
        if not address.startswith(("/", "@")) or len(address) < 2:
            LOG.warning(
                "sd_notify: unsupported NOTIFY_SOCKET %r (a path or @abstract name "
                "expected); not notifying systemd",
                address,
            )
            return NullNotifier()
        usec = _int_env(env, "WATCHDOG_USEC")
        pid = _int_env(env, "WATCHDOG_PID")
        if pid is not None and pid != os.getpid():
            usec = None  # the watchdog is meant for another process
        return SystemdNotifier(address, watchdog_usec=usec, watchdog_pid=pid)
    except Exception:
        LOG.warning("sd_notify: cannot set up notifications; not notifying systemd", exc_info=True)
        return NullNotifier()
