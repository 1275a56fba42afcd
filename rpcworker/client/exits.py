"""How ``rpcworker-client`` ends: exit statuses, the errors that carry them, and how an
error is reported on stderr (one line, or one JSON object with ``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rpcworker.wire.replyformat import RemoteError

PROG = "rpcworker-client"

EXIT_OK = 0
EXIT_REMOTE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_BROKER = 4
EXIT_INTERRUPTED = 130

#: ``error.module`` of the errors the client itself reports (not the remote method's)
CLIENT_MODULE = "rpcworker.cmd.client"
_ERROR_TYPES = {1: "RemoteError", 2: "UsageError", 3: "Timeout", 4: "BrokerError"}


class ClientError(Exception):
    """Ends the command: ``str()`` is printed on stderr, ``status`` is the exit status."""

    def __init__(self, status: int, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or _ERROR_TYPES.get(status, "Error")

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form: ``{"error": {"type", "module", "message"}, "exit": N}``."""
        return {
            "error": {"type": self.type, "module": CLIENT_MODULE, "message": str(self)},
            "exit": self.status,
        }


class UsageError(ClientError):
    """A command-line error; ``usage`` is the usage text of the (sub)command."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(EXIT_USAGE, message)
        self.usage = usage


class RemoteCallError(ClientError):
    """The remote method raised: printed as ``Type: message``."""

    def __init__(self, failure: RemoteError, traceback: bool = False) -> None:
        super().__init__(EXIT_REMOTE, failure.line(), failure.cls)
        self.failure = failure
        self.traceback = traceback

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "type": self.failure.cls,
            "module": self.failure.module,
            "message": self.failure.message,
        }
        if self.traceback and self.failure.traceback:
            error["traceback"] = "".join(self.failure.traceback).rstrip("\n")
        return {"error": error, "exit": self.status}


def report(exc: ClientError, as_json: bool) -> None:
    """Print the error that ends the command on stderr (one JSON object with --json)."""
    if as_json:
        print(json.dumps(exc.as_json(), ensure_ascii=False), file=sys.stderr)
    elif isinstance(exc, UsageError):
        sys.stderr.write(f"{exc.usage}{exc}\n")  # as argparse prints it
    elif isinstance(exc, RemoteCallError):
        if exc.traceback and exc.failure.traceback:
            sys.stderr.write("".join(exc.failure.traceback).rstrip("\n") + "\n")
        print(str(exc), file=sys.stderr)
    else:
        print(f"{PROG}: {exc}", file=sys.stderr)


def warn(as_json: bool, text: str) -> None:
    """A note on stderr: ``rpcworker-client: text``, or ``{"warning": text}`` with --json."""
    line = json.dumps({"warning": text}) if as_json else f"{PROG}: {text}"
    print(line, file=sys.stderr)
