"""The ``echo`` handler: returns what it is given, for diagnostics."""

from __future__ import annotations

import time
from typing import Any

from oslo_config import cfg

from rpcworker.wire.message import Message


class EchoHandler:
    """Echo the arguments of every call back to the caller (diagnostics)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    def echo(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Return the keyword arguments unchanged."""
        return kwargs

    def ping(self, ctxt: dict[str, Any]) -> str:
        """Return "pong" (like oslo.messaging's oslo_rpc_server_ping)."""
        return "pong"

    def oslo_rpc_server_ping(self, ctxt: dict[str, Any]) -> str:
        """oslo.messaging's ping method name, so `openstack ... ping` style tools work."""
        return "pong"

    def context(self, ctxt: dict[str, Any]) -> dict[str, Any]:
        """Return the request context the worker received."""
        return ctxt

    def sleep(self, ctxt: dict[str, Any], seconds: float = 1.0, **kwargs: Any) -> dict[str, Any]:
        """Sleep, then return the arguments: a slow call for testing timeouts and draining."""
        time.sleep(float(seconds))
        return dict(kwargs, slept=float(seconds))

    def fail(self, ctxt: dict[str, Any], message: str = "failed on request") -> None:
        """Raise ValueError(message): shows how errors reach the caller."""
        raise ValueError(message)

    def handle_message(self, message: Message) -> Any:
        """Events are accepted and their body returned (and discarded)."""
        return message.body
