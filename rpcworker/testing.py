"""A broker-less fixture for plugin authors: run a handler in a real rpcworker loop on
kombu's in-memory transport and call it like a client would.

    from rpcworker.testing import HandlerFixture

    def test_my_handler():
        with HandlerFixture(MyHandler) as fx:
            assert fx.call("add", a=1, b=2) == 3
            fx.cast("forget", key="k")
            fx.publish_event({"event_type": "thing.created"}, routing_key="thing.created")
            fx.wait_idle()

The handler runs exactly as in the daemon: the same decoding, dispatcher,
ack policy and thread pool. ``memory://`` is for tests only: it has no message
TTL, so a retried message stays in its delay queue (``worker.stats.retried``
counts it) instead of coming back.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu
from oslo_config import cfg

from rpcworker import bindings as bindings_mod
from rpcworker import config, opts, protocol, topology
from rpcworker.consumer import Worker
from rpcworker.errors import RPCWorkerError
from rpcworker.executor import Executor

_fixture_ids = itertools.count(1)


class RemoteFailure(RPCWorkerError):
    """The handler (or the dispatcher) answered a call with an error."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.exc_type = str(info.get("class", ""))
        self.module = str(info.get("module", ""))
        super().__init__(f"{self.exc_type}: {info.get('message', '')}")


class HandlerFixture:
    """Run ``handler`` (an instance, or a class called as ``handler(conf)``) in a Worker.

    ``config_text`` is an INI snippet read as the config file (e.g. the
    handler's own ``[group]`` options); ``binding_options`` sets options of both
    bindings (e.g. ``{"max_retries": 0}``); ``configure(conf)`` may set overrides
    before a handler class is instantiated. The handler is served by an ``rpc``
    binding on ``topic`` and, for events, a ``topic`` binding on exchange
    ``events_exchange`` bound with ``#``.
    """

    def __init__(self, handler: Any, *, topic: str | None = None,
                 acknowledge: str = "after", threads: int = 4,
                 config_text: str | None = None,
                 namespace: str | None = None, version: str | None = None,
                 binding_options: dict[str, Any] | None = None,
                 configure: Callable[[cfg.ConfigOpts], None] | None = None) -> None:
        n = next(_fixture_ids)
        self.topic = topic or f"test_topic_{n}"
        self.events_exchange = f"test_events_{n}"
        #: namespace and version sent with every call/cast (like an oslo Target)
        self.namespace = namespace
        self.version = version
        self.url = "memory://"
        self._tmpdir = tempfile.TemporaryDirectory(prefix="rpcworker-fixture-")
        args: list[str] = []
        if config_text is not None:
            path = os.path.join(self._tmpdir.name, "rpcworker.conf")
            with open(path, "w") as f:
                f.write(textwrap.dedent(config_text))
            args = ["--config-file", path]
        self.conf = config.new_conf(with_cli=False)
        self.conf(args, project="rpcworker-test", default_config_files=[])
        rpc_name, events_name = f"rpc{n}", f"events{n}"
        self.conf.set_override("bindings", [rpc_name, events_name])
        self.conf.set_override("host", "testhost")
        self.conf.set_override("executor_thread_pool_size", threads)
        for name, values in (
            (rpc_name, {"type": "rpc", "topic": self.topic, "exchange": "openstack"}),
            (events_name, {"type": "topic", "exchange": self.events_exchange,
                           "routing_key": ["#"], "queue": f"{self.events_exchange}_q"}),
        ):
            group = opts.register_binding_opts(self.conf, name)
            self.conf.set_override("handler", "handler", group=group)
            self.conf.set_override("acknowledge", acknowledge, group=group)
            for key, value in {**values, **(binding_options or {})}.items():
                self.conf.set_override(key, value, group=group)
        if configure is not None:
            configure(self.conf)
        self.handler = handler(self.conf) if callable(handler) and isinstance(handler, type) \
            else handler
        parsed = bindings_mod.parse(self.conf)
        self._executor = Executor(threads)
        self.worker = Worker(self.conf, kombu.Connection(self.url,
                                                         transport_options={"polling_interval":
                                                                            0.01}),
                             [topology.build(b) for b in parsed], {"handler": self.handler},
                             self._executor)
        self._thread: threading.Thread | None = None
        self._client = kombu.Connection(self.url)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> HandlerFixture:
        self._thread = threading.Thread(target=self.worker.run, name="rpcworker-fixture",
                                        daemon=True)
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

    def call(self, method: str, ctxt: dict[str, Any] | None = None, timeout: float = 5.0,
             **args: Any) -> Any:
        """An oslo.messaging-style call; returns the result or raises RemoteFailure."""
        reply_q = f"reply_{uuid.uuid4().hex}"
        msg_id = uuid.uuid4().hex
        with self._client.channel() as channel:
            queue = kombu.Queue(reply_q, exchange=kombu.Exchange("", type="direct"),
                                routing_key=reply_q, channel=channel)
            queue.declare()
            self._publish_rpc(method, ctxt, args, extra={"msg_id": msg_id,
                                                         "reply_q": reply_q})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = queue.get(no_ack=True)
                if message is None:
                    time.sleep(0.005)
                    continue
                inner = json.loads(json.loads(message.body)[protocol.OSLO_MESSAGE_KEY])
                if inner.get("_msg_id") != msg_id or not inner.get("ending"):
                    continue
                if inner.get("failure"):
                    raise RemoteFailure(json.loads(inner["failure"]))
                return inner.get("result")
        raise TimeoutError(f"no reply to {method!r} within {timeout}s")

    def cast(self, method: str, ctxt: dict[str, Any] | None = None, **args: Any) -> None:
        """An oslo.messaging-style cast (no reply)."""
        self._publish_rpc(method, ctxt, args, extra={})

    def publish_event(self, body: Any, routing_key: str = "event",
                      headers: dict[str, Any] | None = None) -> None:
        """Publish a plain JSON event to the fixture's topic exchange."""
        with self._client.Producer() as producer:
            producer.publish(json.dumps(body).encode(), exchange=self.events_exchange,
                             routing_key=routing_key, content_type=protocol.JSON,
                             content_encoding="utf-8", headers=headers or {})

    def publish_raw(self, body: bytes, content_type: str | None = protocol.JSON,
                    routing_key: str = "event") -> None:
        """Publish arbitrary bytes (e.g. to test that bad input is refused)."""
        with self._client.Producer() as producer:
            producer.publish(body, exchange=self.events_exchange, routing_key=routing_key,
                             content_type=content_type, content_encoding="utf-8")

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every message published so far has been handled and settled."""
        def idle() -> bool:
            with self._client.channel() as channel:
                for t in self.worker.topologies:
                    for q in t.queues:
                        if q.name and channel._size(q.name):
                            return False
            return self.worker.executor.pending == 0 and not self.worker._inflight
        self._wait(idle, timeout, "the worker to be idle")

    def _publish_rpc(self, method: str, ctxt: dict[str, Any] | None, args: dict[str, Any],
                     extra: dict[str, Any]) -> None:
        body = protocol.envelope(protocol.oslo_request(
            method, args, ctxt, namespace=self.namespace, version=self.version, **extra))
        with self._client.Producer() as producer:
            producer.publish(body, exchange="openstack", routing_key=self.topic,
                             content_type=protocol.JSON, content_encoding="utf-8")

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.005)
