"""rpcworker: an AMQP worker daemon that runs handler plugins for oslo.messaging RPC,
plain AMQP RPC and events.

The public API for plugin authors is re-exported here.
"""

from rpcworker.errors import (
    ConfigError,
    NoSuchMethod,
    PluginError,
    Reject,
    Requeue,
    RPCWorkerError,
    UnsupportedVersion,
)
from rpcworker.wire.message import Message

__all__ = [
    "ConfigError",
    "Message",
    "NoSuchMethod",
    "PluginError",
    "RPCWorkerError",
    "Reject",
    "Requeue",
    "UnsupportedVersion",
]
