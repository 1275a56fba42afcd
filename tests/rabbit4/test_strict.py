"""The strict node really is strict: what RabbitMQ 4.x deprecates is refused, what it
keeps is accepted (the facts recorded in tests/rabbit4node.py's docstring)."""

from __future__ import annotations

import amqp
import kombu
import pytest

from tests.rabbit4node import Rabbit4Node


def test_transient_nonexclusive_queue_is_refused_durable_and_exclusive_accepted(
    strict_broker: Rabbit4Node, uid: str
) -> None:
    assert strict_broker.version.startswith("4."), strict_broker.version
    # 541 closes the whole connection, not just the channel: one connection per declare
    for auto_delete in (False, True):
        with kombu.Connection(strict_broker.url, connect_timeout=5) as conn:
            queue = kombu.Queue(
                f"transient-{uid}-{auto_delete}",
                durable=False,
                exclusive=False,
                auto_delete=auto_delete,
            )(conn.channel())
            with pytest.raises(amqp.exceptions.InternalError) as refused:
                queue.declare()
        assert refused.value.code == 541
        assert refused.value.method_name == "Queue.declare"
        assert str(refused.value.reply_text).startswith(
            "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated."
        ), refused.value.reply_text
        assert "deprecated_features.permit.transient_nonexcl_queues = false" in str(
            refused.value.reply_text
        )

    durable = f"durable-{uid}"
    with kombu.Connection(strict_broker.url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            kombu.Queue(durable, durable=True)(channel).declare()
            kombu.Queue(f"exclusive-{uid}", durable=False, exclusive=True)(channel).declare()
            server_named = channel.queue_declare("", exclusive=True).queue
            assert server_named.startswith("amq.gen-")
            listed = strict_broker.ctl("list_queues", "-q", "--no-table-headers", "name")
            assert listed.returncode == 0, listed.stderr
            names = listed.stdout.split()
            assert durable in names and f"exclusive-{uid}" in names, names
            assert not [n for n in names if n.startswith(f"transient-{uid}")], names
        finally:
            channel.queue_delete(durable)
