"""The commands: ``call`` (and its reply queue), ``cast``, ``fanout``, ``publish``,
``notify``."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu

from rpcworker.client.args import json_errors, merge_args
from rpcworker.client.connect import (
    Session,
    ensure_exchange,
    ensure_queue,
    exchange_exists,
    publish,
)
from rpcworker.client.exits import (
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    ClientError,
    RemoteCallError,
    warn,
)
from rpcworker.client.request import RpcRequest, inner_message, rpc_request
from rpcworker.errors import oneline
from rpcworker.wire import envelope, replyformat

#: how long one drain_events() may block, so that heartbeats keep being sent
_POLL = 1.0


class Caller:
    """Calls over one session, one after the other, with one reply queue for all."""

    def __init__(self, session: Session, req: RpcRequest, ns: argparse.Namespace) -> None:
        self.session, self.req = session, req
        self.timeout: float = ns.timeout
        self.monitor: float | None = ns.call_monitor_timeout
        # oslo declares the control exchange (topic, non-durable by default) before sending
        ensure_exchange(
            session, req.exchange, "topic", durable=session.oslo.durable, auto_delete=False
        )
        self.reply_q = f"reply_{uuid.uuid4().hex}"
        self.waiter: replyformat.ReplyWaiter | None = None
        queue = kombu.Queue(self.reply_q, durable=False, exclusive=True, auto_delete=True)
        kombu.Consumer(
            session.conn.default_channel, queues=[queue], no_ack=True, on_message=self._on_reply
        ).consume()

    def _on_reply(self, message: Any) -> None:
        if self.waiter is not None:  # replies to an earlier call that timed out: dropped
            self.waiter.feed(message.body)

    def call(self) -> replyformat.ReplyWaiter:
        """One call: the complete waiter (result or failure); ClientError(3) on a timeout."""
        req = self.req
        self.waiter = waiter = replyformat.ReplyWaiter(uuid.uuid4().hex)
        inner = inner_message(
            req, msg_id=waiter.msg_id, reply_q=self.reply_q, monitor_timeout=self.monitor
        )
        publish(
            self.session,
            envelope.envelope(inner),
            req.exchange,
            req.routing_key,
            expiration=self.timeout,
        )
        wait_reply(self.session, waiter, req, self.timeout, self.monitor)
        return waiter


def cmd_call(session: Session, ns: argparse.Namespace) -> int:
    waiter = Caller(session, rpc_request(ns), ns).call()
    if waiter.failure is not None:
        raise RemoteCallError(waiter.failure, traceback=ns.traceback)
    print(json.dumps(waiter.result, ensure_ascii=False))
    return EXIT_OK


def wait_reply(
    session: Session,
    waiter: replyformat.ReplyWaiter,
    req: RpcRequest,
    timeout: float,
    monitor: float | None,
) -> None:
    """Drain the connection until the reply is complete; ClientError(3) on a timeout."""
    deadline = time.monotonic() + timeout
    while not waiter.done:
        now = time.monotonic()
        if now >= deadline:
            raise ClientError(
                EXIT_TIMEOUT,
                f"timed out after {timeout:g}s waiting for a reply "
                f"to {req.method!r} sent to exchange {req.exchange!r} with "
                f"routing key {req.routing_key!r} (is a server consuming "
                "that topic?)",
            )
        if monitor is not None and now - waiter.last_heard >= monitor:
            raise ClientError(
                EXIT_TIMEOUT,
                f"no heartbeat from the server for {monitor:g}s "
                f"(--call-monitor-timeout) while waiting for {req.method!r}",
            )
        session.conn.heartbeat_check()
        try:
            session.conn.drain_events(timeout=min(_POLL, deadline - now))
        except TimeoutError:
            continue


def caster(session: Session, ns: argparse.Namespace) -> Callable[[], None]:
    """Declare what a cast or fanout needs; return the function that sends one."""
    req = rpc_request(ns)
    if ns.command == "fanout":
        exchange, routing_key = f"{req.topic}_fanout", ""
        # as oslo's fanout_send declares it; an existing one is left as is (it may be
        # durable where the servers use rabbit_transient_quorum_queue)
        ensure_exchange(
            session, exchange, "fanout", durable=session.oslo.fanout_durable, auto_delete=True
        )
    else:
        exchange, routing_key = req.exchange, req.routing_key
        ensure_exchange(session, exchange, "topic", durable=session.oslo.durable, auto_delete=False)

    def send() -> None:  # a new _unique_id each time
        publish(session, envelope.envelope(inner_message(req)), exchange, routing_key)

    return send


def cmd_cast(session: Session, ns: argparse.Namespace) -> int:
    caster(session, ns)()
    return EXIT_OK


cmd_fanout = cmd_cast


def cmd_publish(session: Session, ns: argparse.Namespace) -> int:
    exchange: str = ns.exchange
    if exchange and not exchange_exists(session, exchange):
        if ns.type is None:
            raise ClientError(
                EXIT_USAGE, f"exchange {exchange!r} does not exist; give --type to declare it"
            )
        ensure_exchange(session, exchange, ns.type, durable=True, auto_delete=False)
        warn(
            json_errors(ns, ()),
            f"exchange {exchange!r} did not exist: declared it (type {ns.type}, durable)",
        )
    elif exchange and session.settings.folder is not None:
        ensure_exchange(session, exchange, ns.type or "direct", durable=True, auto_delete=False)
    returned: list[str] = []

    def on_return(exc: BaseException, *_: Any) -> None:
        returned.append(oneline(exc, with_type=False))

    publish(session, ns.body, exchange, ns.routing_key, on_return=on_return)
    if returned:
        warn(
            json_errors(ns, ()),
            f"warning: no queue is bound to exchange {exchange!r} for "
            f"routing key {ns.routing_key!r}: the broker dropped the message",
        )
    return EXIT_OK


def cmd_notify(session: Session, ns: argparse.Namespace) -> int:
    """As oslo's notifier: the topic exchange (declared if missing: not durable, not
    auto-delete), the default queue TOPIC.PRIORITY (likewise, so that the notification is
    kept until a listener comes), then the envelope 2.0 to routing key TOPIC.PRIORITY.
    Prints the notification's message_id."""
    key = f"{ns.topic}.{ns.priority}"
    ensure_exchange(session, ns.exchange, "topic", durable=session.oslo.durable, auto_delete=False)
    ensure_queue(session, key, ns.exchange, key)
    inner = envelope.oslo_notification(
        ns.priority,
        ns.event_type,
        merge_args(ns.payload, ns.arg),
        ns.publisher_id,
        dict(ns.context or []),
    )
    publish(session, envelope.envelope(inner), ns.exchange, key)
    print(json.dumps({"message_id": inner["message_id"]}))
    return EXIT_OK


COMMANDS: dict[str, Callable[[Session, argparse.Namespace], int]] = {
    "call": cmd_call,
    "cast": cmd_cast,
    "fanout": cmd_fanout,
    "publish": cmd_publish,
    "notify": cmd_notify,
}
