"""RabbitMQ 4's deprecated features: how a broker that denies one refuses it, which of a
binding's entities use one, and the option that avoids it.

A RabbitMQ 4 node with ``deprecated_features.permit.transient_nonexcl_queues = false``
answers the ``queue.declare`` of a non-durable, non-exclusive queue by closing the whole
connection: ``541 INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.``
(the same for ``global_qos`` and a ``basic.qos`` with ``global``). Retrying cannot help:
the worker stops with exit status 2 and one line naming the binding, the queue, the
feature and the option that fixes it (``Refused``).
"""

from __future__ import annotations

import re

from amqp.exceptions import InternalError
from kombu import Queue

from rpcworker.config import opts
from rpcworker.config.bindingconf import Binding
from rpcworker.errors import ConfigError

#: what py-amqp raises for a 541 (a connection error: kombu would reconnect forever)
RefusalError = InternalError
TRANSIENT_QUEUES = "transient_nonexcl_queues"
GLOBAL_QOS = "global_qos"

_FEATURE = re.compile(r"[Ff]eature `?([a-z_]+)`? is deprecated")


def refused_feature(exc: BaseException) -> str | None:
    """The deprecated feature a broker refused with ``exc`` (541), or None."""
    if getattr(exc, "reply_code", None) not in (541, None):
        return None
    match = _FEATURE.search(str(exc))
    return match.group(1) if match else None


def uses_transient_queue(queue: Queue) -> bool:
    """A non-durable, non-exclusive queue: what ``transient_nonexcl_queues`` covers."""
    return not queue.durable and not queue.exclusive


class Refused(ConfigError):
    """The broker denies a deprecated feature one of the binding's entities uses."""

    def __init__(self, binding: Binding, queue: str, feature: str) -> None:
        group, option, advice = fix_for(binding, queue, feature)
        super().__init__(
            group,
            option,
            f"binding {binding.name}: the broker refused queue {queue!r}: it denies the "
            f"deprecated feature {feature} ({_WHAT.get(feature, 'see the broker log')}); "
            f"{advice}",
        )
        self.binding = binding
        self.queue = queue
        self.feature = feature


_WHAT = {
    TRANSIENT_QUEUES: "non-durable, non-exclusive queues",
    GLOBAL_QOS: "basic.qos with global = true",
}


def fix_for(b: Binding, queue: str, feature: str) -> tuple[str, str, str]:
    """(group, option, advice) that avoids ``feature`` for ``queue`` of ``b``."""
    oslo = opts.OSLO_RABBIT_GROUP
    if feature != TRANSIENT_QUEUES:
        return b.group, "prefetch_count", "rpcworker never asks for it: report this"
    if b.type == "rpc" and queue not in b.work_queues and ".retry." not in queue:
        return (
            oslo,
            "rabbit_transient_quorum_queue",
            "set rabbit_transient_quorum_queue = true (the per-process fanout queue "
            "becomes a quorum queue), as oslo.messaging on RabbitMQ 4",
        )
    if b.type in ("rpc", "notification"):
        return (
            oslo,
            "rabbit_quorum_queue",
            "set rabbit_quorum_queue = true (or amqp_durable_queues = true, or this "
            f"binding's durable = true); every server of the topic must agree, and an "
            f"existing queue must be deleted first (rabbitmqctl delete_queue {queue})",
        )
    return (
        b.group,
        "durable",
        "set durable = true (or queue_type = quorum, or exclusive = true for a queue of "
        f"this process only); an existing queue must be deleted first (rabbitmqctl "
        f"delete_queue {queue})",
    )
