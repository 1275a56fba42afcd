"""What the command line asks for, independent of the broker, and its oslo.messaging
message: envelope 2.0, the inner fields in the order oslo.messaging 18 sends them."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from rpcworker.client.args import DEFAULT_EXCHANGE, merge_args
from rpcworker.wire import envelope


@dataclasses.dataclass(frozen=True)
class RpcRequest:
    """What the command line asks for, independent of the broker."""

    topic: str
    method: str
    args: Mapping[str, Any]
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    namespace: str | None = None
    version: str | None = None
    server: str | None = None
    exchange: str = DEFAULT_EXCHANGE

    @property
    def routing_key(self) -> str:
        return f"{self.topic}.{self.server}" if self.server else self.topic


def rpc_request(ns: argparse.Namespace) -> RpcRequest:
    return RpcRequest(
        topic=ns.topic,
        method=ns.method,
        args=merge_args(ns.args_json, ns.arg),
        context=dict(ns.context or []),
        namespace=ns.namespace,
        version=ns.version,
        server=getattr(ns, "server", None),
        exchange=getattr(ns, "exchange", None) or DEFAULT_EXCHANGE,
    )


def inner_message(
    req: RpcRequest,
    *,
    msg_id: str | None = None,
    reply_q: str | None = None,
    monitor_timeout: float | None = None,
    unique_id: str | None = None,
) -> dict[str, Any]:
    """The inner dict, field for field and in the order oslo.messaging 18 builds it.

    ``msg_id`` and ``reply_q`` make it a call (with ``_timeout``); without them a cast.
    """
    return envelope.oslo_request(
        req.method,
        req.args,
        req.context,
        namespace=req.namespace,
        version=req.version,
        msg_id=msg_id,
        reply_q=reply_q,
        timeout=monitor_timeout,
        unique_id=unique_id,
    )
