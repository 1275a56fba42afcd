"""The ``log`` handler: logs every message it gets."""

from __future__ import annotations

import json
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.wire.message import Message

LOG = logging.getLogger(__name__)


class LogHandler:
    """Log every message (RPC request or event) at INFO, and accept it."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    def __getattr__(self, name: str) -> Any:
        # any public method name is accepted and logged (the dispatcher never
        # routes "_" names here)
        if name.startswith("_") or name in ("target", "handle_message"):
            raise AttributeError(name)

        def log_call(ctxt: dict[str, Any], **kwargs: Any) -> None:
            LOG.info("rpc %s(%s) context=%s", name, _compact(kwargs), _compact(ctxt))

        return log_call

    def handle_message(self, message: Message) -> None:
        LOG.info(
            "event exchange=%r routing_key=%r body=%s",
            message.exchange,
            message.routing_key,
            _compact(message.body),
        )


def _compact(value: Any, limit: int = 2000) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"
