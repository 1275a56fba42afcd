"""The message object handed to ``handler.handle_message(message)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpcworker.wire.decoding import Request


@dataclasses.dataclass(frozen=True)
class Message:
    """A delivery that is not an RPC request (an event, an oslo notification, ...).

    ``body`` is the decoded JSON (unwrapped from the oslo envelope when it had one).
    It is a plain value: acking and replying are rpcworker's job, not the handler's.
    """

    body: Any
    routing_key: str
    exchange: str
    headers: Mapping[str, Any]
    properties: Mapping[str, Any]
    redelivered: bool

    @classmethod
    def from_request(cls, request: Request) -> Message:
        return cls(
            body=request.body,
            routing_key=request.routing_key,
            exchange=request.exchange,
            headers=request.headers,
            properties=request.properties,
            redelivered=request.redelivered,
        )
