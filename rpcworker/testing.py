"""A broker-less fixture for plugin authors: run a handler in a real rpcworker loop on
kombu's in-memory transport and call it like a client would.

    from rpcworker.testing import HandlerFixture

    def test_my_handler():
        with HandlerFixture(MyHandler) as fx:
            assert fx.call("add", a=1, b=2) == 3
            fx.cast("forget", key="k")
            fx.publish_event({"event_type": "thing.created"}, routing_key="thing.created")
            fx.wait_idle()
            assert [o.method for o in fx.acked] == ["add", "forget", None]

The fixture records the outcome of every delivery (``fx.outcomes``: acked, retried or
dead-lettered, with the reason): ``fx.acked``, ``fx.retried`` and ``fx.dead_letters``
filter it, ``fx.wait_for_outcomes(n, ...)`` waits for them, and ``fx.release_retries()``
plays the part of the delay queue's TTL (moves retried copies back to the work queue).
With pytest, ``pytest_plugins = ["rpcworker.testing"]`` in a conftest.py gives the
``rpcworker_handler`` fixture: ``fx = rpcworker_handler(MyHandler, **options)`` is a
started HandlerFixture, stopped after the test.

The handler runs exactly as in the daemon: the same decoding, dispatcher,
ack policy and thread pool. ``memory://`` is for tests only: it has no message
TTL, so a retried message stays in its delay queue (``worker.stats.retried``
counts it) instead of coming back.

The fixture records what the worker settled as a listener of its engine
(``events.Listener.settled``), and asks the loop thread itself whether it is idle
(``worker.questions.ask(worker.idle)``): it never reads the loop's state from the test
thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu
from oslo_config import cfg

from rpcworker.amqp import topology, transport
from rpcworker.config import bindingconf, conffile, handlerapi, opts, plugins
from rpcworker.config.bindingconf import Acknowledge
from rpcworker.engine.events import Listener
from rpcworker.engine.executor import Executor
from rpcworker.engine.worker import Worker
from rpcworker.errors import RPCWorkerError
from rpcworker.parking import parked
from rpcworker.policy.outcomes import Action, Delivery, Outcome
from rpcworker.wire import envelope, replyformat
from rpcworker.wire.xheaders import retries_of

try:
    import pytest as _pytest
except ImportError:  # pragma: no cover - pytest is optional at run time
    _pytest = None  # type: ignore[assignment]

ACKED = "acked"
RETRIED = "retried"
DEAD_LETTERED = "dead-lettered"
COUNTED = "counted"
REQUEUED = "requeued"

#: how each action the worker carried out is recorded
_RECORDED = {
    Action.ACK: ACKED,
    Action.NONE: ACKED,
    Action.RETRY: RETRIED,
    Action.DEAD_LETTER: DEAD_LETTERED,
    Action.REJECT: DEAD_LETTERED,
    Action.COUNT: COUNTED,
    Action.REQUEUE: REQUEUED,
}

_fixture_ids = itertools.count(1)
#: binding_options that only the notification binding takes
_NOTIFICATION_ONLY = frozenset({"priorities", "pool", "filter_event_type", "filter_publisher_id"})


class RemoteFailure(RPCWorkerError):
    """The handler (or the dispatcher) answered a call with an error."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.exc_type = str(info.get("class", ""))
        self.module = str(info.get("module", ""))
        super().__init__(f"{self.exc_type}: {info.get('message', '')}")

    @classmethod
    def of(cls, error: replyformat.RemoteError) -> RemoteFailure:
        return cls(dict(error.info))


@dataclasses.dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one delivery, as the worker settled it.

    ``action``: ``"acked"`` (also a call answered with an error, and a delivery acked on
    receipt with ``acknowledge = before``), ``"retried"`` (a copy went to a delay queue),
    ``"dead-lettered"`` (parked or rejected without requeue), ``"counted"`` (a
    redelivery sent to the tail of its queue) or ``"requeued"`` (rejected with requeue:
    the worker was stopping). ``kind``: ``"call"``, ``"cast"``,
    ``"event"``, ``"notification"`` (``method`` is then its priority) or ``"refused"``
    (not decoded: not JSON, too big, ...).
    """

    action: str
    kind: str
    method: str | None
    args: dict[str, Any]
    body: Any  # the decoded body; the raw bytes of a refused delivery
    routing_key: str
    binding: str
    queue: str
    reason: str | None
    #: retries before this delivery (the ``x-rpcworker-retries`` header)
    retries: int
    #: the result of a call (None when it failed or was not a call)
    result: Any = None
    #: the failure sent to the caller of a call: oslo's fields (class, module, message...)
    failure: dict[str, Any] | None = None

    @property
    def acked(self) -> bool:
        return self.action == ACKED

    @property
    def retried(self) -> bool:
        return self.action == RETRIED

    @property
    def dead_lettered(self) -> bool:
        return self.action == DEAD_LETTERED


def _reply_fields(outcome: Outcome) -> tuple[Any, dict[str, Any] | None]:
    """(result, failure) of the reply the worker sends, in oslo's or plain AMQP style."""
    reply = replyformat.parse_reply(outcome.reply.body) if outcome.reply is not None else None
    if reply is None:
        return None, None
    return reply.result, (dict(reply.failure.info) if reply.failure is not None else None)


def _record(d: Delivery, outcome: Outcome) -> DeliveryOutcome:
    req = d.request
    info = getattr(d.message, "delivery_info", None) or {}
    result, failure = _reply_fields(outcome)
    args: dict[str, Any] = {}
    method: str | None = None
    if req is None:
        kind, body = "refused", getattr(d.message, "body", None)
        retries = retries_of(getattr(d.message, "headers", None) or {})
    else:
        body, retries = req.body, retries_of(req.headers)
        if req.notification is not None:
            kind, method = "notification", req.notification.priority
        else:
            kind = "event" if req.method is None else "call" if req.is_call else "cast"
            method, args = req.method, dict(req.args)
    return DeliveryOutcome(
        _RECORDED[outcome.action],
        kind,
        method,
        args,
        body,
        str(info.get("routing_key", "")),
        d.binding.name,
        d.queue,
        outcome.reason,
        retries,
        result,
        failure,
    )


class _Recorder(Listener):
    """Records every settled delivery (on the loop thread; memory:// never blocks a
    connection, so the copy is in its queue by then)."""

    def __init__(self, add: Callable[[DeliveryOutcome], None]) -> None:
        self._add = add

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        self._add(_record(delivery, outcome))


def _fixture_conf(
    tmpdir: str,
    config_text: str | None,
    bindings: list[tuple[str, dict[str, Any]]],
    threads: int,
    options: dict[str, Any],
) -> cfg.ConfigOpts:
    """The fixture's ConfigOpts: ``config_text`` as the config file, ``bindings`` (each
    served by the handler named ``handler``) with ``options`` set over each (the
    notification-only ones on the notification binding only)."""
    args: list[str] = []
    if config_text is not None:
        path = os.path.join(tmpdir, "rpcworker.conf")
        with open(path, "w") as f:
            f.write(textwrap.dedent(config_text))
        args = ["--config-file", path]
    conf = conffile.new_conf(with_cli=False)
    conf(args, project="rpcworker-test", default_config_files=[])
    conf.set_override("bindings", [name for name, _ in bindings])
    conf.set_override("host", "testhost")
    conf.set_override("executor_thread_pool_size", threads)
    for name, values in bindings:
        group = opts.register_binding_opts(conf, name)
        conf.set_override("handler", "handler", group=group)
        for key, value in {**values, **options}.items():
            if key in _NOTIFICATION_ONLY and values["type"] != "notification":
                continue  # the notification binding's own options
            conf.set_override(key, value, group=group)
    return conf


def _declare_reply_queue(channel: Any) -> tuple[str, kombu.Queue]:
    """A new reply queue ``reply_<uuid hex>`` on the default exchange, declared."""
    name = f"reply_{uuid.uuid4().hex}"
    queue = kombu.Queue(
        name, exchange=kombu.Exchange("", type="direct"), routing_key=name, channel=channel
    )
    queue.declare()
    return name, queue


def _replies(queue: kombu.Queue, timeout: float) -> Iterator[Any]:
    """The messages arriving on ``queue`` (polled) until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = queue.get(no_ack=True)
        if message is None:
            time.sleep(0.005)
            continue
        yield message


class HandlerFixture:
    """Run ``handler`` (an instance, or a class called as ``handler(conf)``) in a Worker.

    ``config_text`` is an INI snippet read as the config file (e.g. the
    handler's own ``[group]`` options); ``binding_options`` sets options of both
    bindings (e.g. ``{"max_retries": 0}``); ``configure(conf)`` may set overrides
    before a handler class is instantiated. The handler is served by an ``rpc``
    binding on ``topic`` and, for events, a ``topic`` binding on exchange
    ``events_exchange`` bound with ``#``.
    """

    def __init__(
        self,
        handler: Any,
        *,
        topic: str | None = None,
        acknowledge: Acknowledge = "after",
        threads: int = 4,
        config_text: str | None = None,
        namespace: str | None = None,
        version: str | None = None,
        binding_options: dict[str, Any] | None = None,
        configure: Callable[[cfg.ConfigOpts], None] | None = None,
    ) -> None:
        n = next(_fixture_ids)
        self.topic = topic or f"test_topic_{n}"
        self.events_exchange = f"test_events_{n}"
        #: namespace and version sent with every call/cast (like an oslo Target)
        self.namespace = namespace
        self.version = version
        self.url = "memory://"
        self._tmpdir = tempfile.TemporaryDirectory(prefix="rpcworker-fixture-")
        #: the notification binding's exchange and topic (when the handler has a method
        #: for a notification priority: ``info``, ``error``, ...)
        self.notifications_exchange = f"test_notifications_{n}"
        self.notifications_topic = f"notifications_{n}"
        bindings: list[tuple[str, dict[str, Any]]] = [
            (f"rpc{n}", {"type": "rpc", "topic": self.topic, "exchange": "openstack"}),
            (
                f"events{n}",
                {
                    "type": "topic",
                    "exchange": self.events_exchange,
                    "routing_key": ["#"],
                    "queue": f"{self.events_exchange}_q",
                },
            ),
        ]
        if handlerapi.priorities_of(handler):
            bindings.append(
                (
                    f"notify{n}",
                    {
                        "type": "notification",
                        "exchange": self.notifications_exchange,
                        "topic": self.notifications_topic,
                    },
                )
            )
        self.conf = _fixture_conf(
            self._tmpdir.name,
            config_text,
            bindings,
            threads,
            {"acknowledge": acknowledge, **(binding_options or {})},
        )
        if configure is not None:
            configure(self.conf)
        self.handler = (
            handler(self.conf) if callable(handler) and isinstance(handler, type) else handler
        )
        parsed = plugins.resolve_priorities(bindingconf.parse(self.conf), {"handler": self.handler})
        self._executor = Executor(threads)
        self._outcomes: list[DeliveryOutcome] = []
        self._outcomes_lock = threading.Lock()
        self.worker = Worker(
            self.conf,
            kombu.Connection(self.url, transport_options={"polling_interval": 0.01}),
            [topology.build(b) for b in parsed],
            {"handler": self.handler},
            self._executor,
            listeners=[_Recorder(self._add_outcome)],
        )
        self._thread: threading.Thread | None = None
        self._client = kombu.Connection(self.url)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> HandlerFixture:
        self._thread = threading.Thread(
            target=self.worker.run, name="rpcworker-fixture", daemon=True
        )
        self._thread.start()
        self._wait(lambda: self.worker.ready, 5.0, "the worker to consume")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.worker.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self._executor.shutdown(wait=True)
        self._client.release()
        self._tmpdir.cleanup()

    def __enter__(self) -> HandlerFixture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client side -----------------------------------------------------------

    def call(
        self, method: str, ctxt: dict[str, Any] | None = None, timeout: float = 5.0, **args: Any
    ) -> Any:
        """An oslo.messaging-style call; returns the result or raises RemoteFailure."""
        msg_id = uuid.uuid4().hex
        with self._client.channel() as channel:
            reply_q, queue = _declare_reply_queue(channel)
            self._publish_rpc(method, ctxt, args, extra={"msg_id": msg_id, "reply_q": reply_q})
            waiter = replyformat.ReplyWaiter(msg_id)
            for message in _replies(queue, timeout):
                if not waiter.feed(message.body):
                    continue
                if waiter.failure is not None:
                    raise RemoteFailure.of(waiter.failure)
                return waiter.result
        raise TimeoutError(f"no reply to {method!r} within {timeout}s")

    def cast(self, method: str, ctxt: dict[str, Any] | None = None, **args: Any) -> None:
        """An oslo.messaging-style cast (no reply)."""
        self._publish_rpc(method, ctxt, args, extra={})

    def publish_event(
        self, body: Any, routing_key: str = "event", headers: dict[str, Any] | None = None
    ) -> None:
        """Publish a plain JSON event to the fixture's topic exchange."""
        with self._client.Producer() as producer:
            producer.publish(
                json.dumps(body).encode(),
                exchange=self.events_exchange,
                routing_key=routing_key,
                content_type=envelope.JSON,
                content_encoding="utf-8",
                headers=headers or {},
            )

    def notify(
        self,
        event_type: str,
        payload: Any,
        priority: str = "info",
        publisher_id: str = "test.host",
        ctxt: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send a notification as an oslo.messaging ``Notifier`` (driver messagingv2)
        does, to the fixture's notification binding; returns its message_id."""
        if not self._has_notification_binding():
            raise RuntimeError("the handler has no method for a notification priority")
        inner = envelope.oslo_notification(
            priority, event_type, payload, publisher_id, ctxt, message_id
        )
        with self._client.Producer() as producer:
            producer.publish(
                envelope.envelope(inner),
                exchange=self.notifications_exchange,
                routing_key=f"{self.notifications_topic}.{priority.lower()}",
                content_type=envelope.JSON,
                content_encoding="utf-8",
            )
        return str(inner["message_id"])

    def _has_notification_binding(self) -> bool:
        return any(t.binding.type == "notification" for t in self.worker.subscriptions.topologies)

    def publish_raw(
        self, body: bytes, content_type: str | None = envelope.JSON, routing_key: str = "event"
    ) -> None:
        """Publish arbitrary bytes (e.g. to test that bad input is refused)."""
        with self._client.Producer() as producer:
            producer.publish(
                body,
                exchange=self.events_exchange,
                routing_key=routing_key,
                content_type=content_type,
                content_encoding="utf-8",
            )

    def replay(self, path: str) -> int:
        """Deliver every message of a ``rpcworker-client parked export`` file to the
        handler byte for byte (body, properties and headers, with the retry counters reset
        as ``parked replay`` resets them): an RPC request to the rpc binding, a
        notification to the notification binding, anything else to the events exchange
        with its original routing key. Returns how many; ``wait_for_outcomes(n)`` then
        shows what the handler made of them, e.g. the production failure reproduced."""
        return self._replay_export(path)

    def _replay_export(self, path: str) -> int:
        count = 0
        with self._client.channel() as channel:
            for p in parked.read_export(path):
                exchange, key = self._replay_route(p)
                props = p.kept_properties()
                message = channel.prepare_message(
                    p.body,
                    props.pop("priority", None),
                    props.pop("content_type", None),
                    props.pop("content_encoding", None),
                    p.replay_headers(),
                    props,
                )
                channel.basic_publish(message, exchange, key)
                count += 1
        return count

    def _replay_route(self, p: parked.Parked) -> tuple[str, str]:
        """Where ``HandlerFixture.replay`` sends an exported message."""
        kind, _ = p.kind()
        if kind in ("call", "cast"):
            return "openstack", self.topic
        body = p.decoded()
        if kind == "notification" and isinstance(body, dict):
            if not self._has_notification_binding():
                raise RuntimeError(
                    "an exported notification, and the handler has no method "
                    "for a notification priority"
                )
            priority = str(body["priority"]).lower()
            return self.notifications_exchange, f"{self.notifications_topic}.{priority}"
        return self.events_exchange, p.original_routing_key or "event"

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every message published so far has been handled and settled (the
        loop thread says so: nothing in flight, nothing to settle, its queues empty)."""
        deadline = time.monotonic() + timeout

        def idle() -> bool:
            try:
                return self.worker.questions.ask(
                    self.worker.idle, max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                return False

        self._wait(idle, timeout, "the worker to be idle")

    def call_amqp(
        self, method: str, context: dict[str, Any] | None = None, timeout: float = 5.0, **args: Any
    ) -> Any:
        """A plain AMQP RPC call (JSON body, ``reply_to``/``correlation_id``), as a client
        in any language sends it; returns the result or raises RemoteFailure."""
        corr = uuid.uuid4().hex
        request: dict[str, Any] = {"method": method, "args": args, "context": context or {}}
        if self.namespace is not None:
            request["namespace"] = self.namespace
        if self.version is not None:
            request["version"] = self.version
        with self._client.channel() as channel:
            reply_q, queue = _declare_reply_queue(channel)
            with self._client.Producer() as producer:
                producer.publish(
                    json.dumps(request).encode(),
                    exchange="openstack",
                    routing_key=self.topic,
                    content_type=envelope.JSON,
                    content_encoding="utf-8",
                    reply_to=reply_q,
                    correlation_id=corr,
                )
            for message in _replies(queue, timeout):
                reply = replyformat.parse_reply(message.body)
                if message.properties.get("correlation_id") != corr or reply is None:
                    continue
                if reply.failure is not None:
                    raise RemoteFailure.of(reply.failure)
                return reply.result
        raise TimeoutError(f"no reply to {method!r} within {timeout}s")

    # -- outcomes --------------------------------------------------------------

    def _add_outcome(self, outcome: DeliveryOutcome) -> None:
        with self._outcomes_lock:
            self._outcomes.append(outcome)

    @property
    def outcomes(self) -> list[DeliveryOutcome]:
        """Every delivery settled so far, in order (a copy)."""
        with self._outcomes_lock:
            return list(self._outcomes)

    @property
    def acked(self) -> list[DeliveryOutcome]:
        return [o for o in self.outcomes if o.action == ACKED]

    @property
    def retried(self) -> list[DeliveryOutcome]:
        return [o for o in self.outcomes if o.action == RETRIED]

    @property
    def dead_letters(self) -> list[DeliveryOutcome]:
        return [o for o in self.outcomes if o.action == DEAD_LETTERED]

    def clear_outcomes(self) -> None:
        with self._outcomes_lock:
            self._outcomes.clear()

    def wait_for_outcomes(
        self,
        count: int = 1,
        *,
        timeout: float = 5.0,
        action: str | None = None,
        method: str | None = None,
        kind: str | None = None,
    ) -> list[DeliveryOutcome]:
        """Wait until at least ``count`` recorded outcomes match the filters (each
        filter that is not None must be equal) and return those that match."""

        def matching() -> list[DeliveryOutcome]:
            return [
                o
                for o in self.outcomes
                if (action is None or o.action == action)
                and (method is None or o.method == method)
                and (kind is None or o.kind == kind)
            ]

        wanted = ", ".join(
            f"{k}={v!r}"
            for k, v in (("action", action), ("method", method), ("kind", kind))
            if v is not None
        )
        try:
            self._wait(
                lambda: len(matching()) >= count, timeout, f"{count} outcome(s) {wanted}".rstrip()
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; recorded: {self.outcomes!r}") from None
        return matching()

    def wait_for(
        self, cond: Callable[[], bool], timeout: float = 5.0, what: str = "the condition"
    ) -> None:
        """Poll ``cond`` until it is true; TimeoutError after ``timeout`` seconds."""
        self._wait(cond, timeout, what)

    def release_retries(self) -> int:
        """Move every retried copy from its delay queue back to its work queue, as the
        delay queue's message TTL does on RabbitMQ (memory:// has no TTL). Returns how
        many were moved; call ``wait_idle()`` to let the worker handle them."""
        moved = 0
        with self._client.channel() as channel:
            for topo in self.worker.subscriptions.topologies:
                for queue in topo.queues:
                    for delay in topology.retry_queues(topo.binding, queue):
                        moved += transport.move_messages(channel, delay.name, queue.name)
        return moved

    def _publish_rpc(
        self, method: str, ctxt: dict[str, Any] | None, args: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        body = envelope.envelope(
            envelope.oslo_request(
                method, args, ctxt, namespace=self.namespace, version=self.version, **extra
            )
        )
        with self._client.Producer() as producer:
            producer.publish(
                body,
                exchange="openstack",
                routing_key=self.topic,
                content_type=envelope.JSON,
                content_encoding="utf-8",
            )

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.005)


if _pytest is not None:

    @_pytest.fixture
    def rpcworker_handler() -> Iterator[Callable[..., HandlerFixture]]:
        """A factory of started HandlerFixtures, stopped when the test ends:
        ``fx = rpcworker_handler(MyHandler, config_text=..., namespace=...)``.
        Enable it with ``pytest_plugins = ["rpcworker.testing"]`` in a conftest.py."""
        started: list[HandlerFixture] = []

        def factory(handler: Any, **kwargs: Any) -> HandlerFixture:
            fx = HandlerFixture(handler, **kwargs).start()
            started.append(fx)
            return fx

        yield factory
        for fx in reversed(started):
            fx.stop()
