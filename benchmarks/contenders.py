"""The contenders: what each one declares, how the queue is prefilled, how it is started.

Every drain contender consumes one pre-declared queue (declared by the harness exactly as
the contender itself declares it), and its handler does the same no-op: tick the probe
(``rpcworker_benchplugin.probe``), return the arguments.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import kombu

from benchmarks.infra import Broker, Proc, python_argv

#: the body of every plain JSON cast (rpcworker direct binding, bare kombu consumer)
ECHO_BODY = json.dumps({"method": "echo", "args": {}}).encode()
#: rpcworker's retry delay queues of a binding with the shipped defaults (1 s doubling, 3x)
RETRY_TTLS_MS = (1000, 2000, 4000)


def oslo_casts(n: int, method: str = "echo") -> Iterator[bytes]:
    """``n`` casts byte for byte as oslo.messaging's ``RPCClient.cast({}, method)`` publishes
    them (envelope 2.0, each with its own ``_unique_id``), without oslo's client overhead
    (about 2,400 casts/s here) in the prefill."""
    for _ in range(n):
        inner = json.dumps({"method": method, "args": {}, "_unique_id": uuid.uuid4().hex})
        yield json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode()


def missing(*dists: str) -> str | None:
    for dist in dists:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            return f"{dist} not installed (pip install '.[bench]')"
    return None


class Run:
    """One measured run of one contender: its names, topology, prefill and process."""

    label = "?"
    consumers = 1

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        self.broker = broker
        self.uid = uid
        self.workdir = workdir
        self.queue = ""
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def declare(self) -> None:
        """Declare the queue the contender will consume, before the prefill."""

    def prefill(self, n: int) -> None:
        raise NotImplementedError

    def start(self, env: dict[str, str]) -> Proc:
        raise NotImplementedError

    def cleanup(self) -> None:
        self.broker.delete_queues(self.queues)
        self.broker.delete_exchanges(self.exchanges)

    def log(self) -> Path:
        return self.workdir / f"{self.uid}.log"


# -- rpcworker ----------------------------------------------------------------------------


class RpcworkerDirect(Run):
    """rpcworker, ``workers`` processes, one ``direct`` binding; shipped defaults otherwise."""

    label = "rpcworker"

    def __init__(
        self,
        broker: Broker,
        uid: str,
        workdir: Path,
        *,
        handler: str = "bench_echo",
        method: str = "echo",
        workers: int = 1,
        extra: str = "",
        default_options: str = "",
        binding_options: str = "",
    ) -> None:
        super().__init__(broker, uid, workdir)
        self.handler, self.method, self.workers, self.extra = handler, method, workers, extra
        self.default_options, self.binding_options = default_options, binding_options
        self.consumers = workers
        self.exchange, self.queue, self.key = f"{uid}-x", f"{uid}-q", f"{uid}-k"
        self.queues = [self.queue, *(f"{self.queue}.retry.{t}" for t in RETRY_TTLS_MS)]
        self.exchanges = [self.exchange]
        self.body = json.dumps({"method": method, "args": {}}).encode()

    def config(self) -> str:
        return (
            f"[DEFAULT]\nbindings = bench\nhost = {self.uid}\nworkers = {self.workers}\n"
            f"{self.default_options}\n"
            f"{self.broker.address.config_section()}\n"
            f"[binding:bench]\ntype = direct\nhandler = {self.handler}\n"
            f"exchange = {self.exchange}\nqueue = {self.queue}\n"
            f"routing_key = {self.key}\n{self.binding_options}\n{self.extra}"
        )

    def declare(self) -> None:
        exchange = kombu.Exchange(self.exchange, type="direct", durable=True)
        self.broker.declare(kombu.Queue(self.queue, exchange, routing_key=self.key, durable=True))

    def prefill(self, n: int) -> None:
        self.broker.publish_many(self.exchange, self.key, [self.body] * n)

    def start(self, env: dict[str, str]) -> Proc:
        conf = self.workdir / f"{self.uid}.conf"
        conf.write_text(self.config())
        return Proc(
            self.label, python_argv("-m", "rpcworker", "--config-file", str(conf)), self.log(), env
        )


class RpcworkerNoBudget(RpcworkerDirect):
    """rpcworker as ``RpcworkerDirect``, without the byte budget (max_inflight_bytes = 0):
    the budget's cost on small messages is the difference between the two."""

    label = "rpcworker (max_inflight_bytes = 0)"

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        super().__init__(broker, uid, workdir, default_options="max_inflight_bytes = 0")


class RpcworkerRpc(Run):
    """rpcworker with one ``rpc`` binding (oslo.messaging's topology and wire format)."""

    label = "rpcworker (rpc binding)"

    def __init__(
        self, broker: Broker, uid: str, workdir: Path, *, handler: str = "bench_echo"
    ) -> None:
        super().__init__(broker, uid, workdir)
        self.handler = handler
        self.exchange, self.topic, self.server = f"{uid}-x", f"{uid}-t", f"{uid}-s"
        self.queue = self.topic
        self.queues = [
            self.topic,
            f"{self.topic}.{self.server}",
            *(
                f"{q}.retry.{t}"
                for q in (self.topic, f"{self.topic}.{self.server}")
                for t in RETRY_TTLS_MS
            ),
        ]
        self.exchanges = [self.exchange, f"{self.topic}_fanout"]

    def declare(self) -> None:
        # what oslo.messaging (and rpcworker's rpc binding) declare with their defaults
        exchange = kombu.Exchange(self.exchange, type="topic", durable=False)
        self.broker.declare(
            kombu.Queue(
                self.topic, exchange, routing_key=self.topic, durable=False, auto_delete=False
            )
        )

    def prefill(self, n: int) -> None:
        self.broker.publish_many(self.exchange, self.topic, oslo_casts(n))

    def config(self) -> str:
        return (
            f"[DEFAULT]\nbindings = bench\nhost = {self.server}\nworkers = 1\n\n"
            f"{self.broker.address.config_section()}\n"
            f"[binding:bench]\ntype = rpc\nhandler = {self.handler}\n"
            f"exchange = {self.exchange}\ntopic = {self.topic}\n"
        )

    def start(self, env: dict[str, str]) -> Proc:
        conf = self.workdir / f"{self.uid}.conf"
        conf.write_text(self.config())
        return Proc(
            self.label, python_argv("-m", "rpcworker", "--config-file", str(conf)), self.log(), env
        )


# -- the peers ----------------------------------------------------------------------------


class KombuBare(RpcworkerDirect):
    """A bare kombu consumer on the same topology, with the same messages as rpcworker."""

    label = "bare kombu"
    prefetch = 64  # rpcworker's default prefetch_count
    module = "benchmarks.contender_kombu"

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        super().__init__(broker, uid, workdir)
        self.queues = [self.queue]

    def start(self, env: dict[str, str]) -> Proc:
        return Proc(
            self.label,
            python_argv(
                "-m",
                self.module,
                self.broker.address.kombu_url,
                self.queue,
                self.exchange,
                self.key,
                str(self.prefetch),
            ),
            self.log(),
            env,
        )


class PyamqpBare(KombuBare):
    """A bare py-amqp consumer (``amqp.Connection``, no kombu): the same topology, messages,
    prefetch and per-message work as the bare kombu consumer, one library layer lower."""

    label = "bare py-amqp"
    module = "benchmarks.contender_pyamqp"


class OsloServer(RpcworkerRpc):
    """An oslo.messaging RPC server (threading executor) with a no-op endpoint."""

    label = "oslo.messaging"

    def start(self, env: dict[str, str]) -> Proc:
        return Proc(
            self.label,
            python_argv(
                "-m",
                "benchmarks.contender_oslo",
                self.broker.address.oslo_url,
                self.exchange,
                self.topic,
                self.server,
            ),
            self.log(),
            env,
        )


class FloorResponder(RpcworkerRpc):
    """The latency floor: an oslo-compatible responder answering inline in kombu's callback."""

    label = "inline kombu responder (floor)"

    def start(self, env: dict[str, str]) -> Proc:
        return Proc(
            self.label,
            python_argv(
                "-m",
                "benchmarks.contender_floor",
                self.broker.address.kombu_url,
                self.exchange,
                self.topic,
            ),
            self.log(),
            env,
        )


class CeleryWorker(Run):
    """A Celery worker: solo pool, acks_late, worker_prefetch_multiplier 100."""

    label = "celery"

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        super().__init__(broker, uid, workdir)
        self.queue = f"{uid}-celery"
        self.queues, self.exchanges = [self.queue], [self.queue]

    def prefill(self, n: int) -> None:
        from benchmarks.contender_celery import TASK, make_app

        app = make_app(self.broker.address.kombu_url, self.queue)
        task = app.tasks[TASK]
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(producer=producer)
        app.close()

    def start(self, env: dict[str, str]) -> Proc:
        env = {
            **env,
            "RPCWORKER_BENCH_CELERY_QUEUE": self.queue,
            "RPCWORKER_BENCH_URL": self.broker.address.kombu_url,
        }
        return Proc(
            self.label,
            python_argv(
                "-m",
                "celery",
                "-A",
                "benchmarks.contender_celery",
                "worker",
                "-P",
                "solo",
                "-c",
                "1",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-l",
                "WARNING",
                "-n",
                f"{self.uid}@{socket.gethostname()}",
            ),
            self.log(),
            env,
        )


class DramatiqWorker(Run):
    """A dramatiq worker: one process, its default threads."""

    label = "dramatiq"

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        super().__init__(broker, uid, workdir)
        self.queue = f"{uid}-dramatiq"
        self.queues = [self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"]

    def prefill(self, n: int) -> None:
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=self.broker.address.pika_url)
        try:
            broker.declare_queue(self.queue)
            for _ in range(n):
                broker.enqueue(
                    dramatiq.Message(
                        queue_name=self.queue, actor_name="noop", args=(), kwargs={}, options={}
                    )
                )
        finally:
            broker.close()

    def start(self, env: dict[str, str]) -> Proc:
        env = {
            **env,
            "RPCWORKER_BENCH_DRAMATIQ_QUEUE": self.queue,
            "RPCWORKER_BENCH_URL": self.broker.address.pika_url,
        }
        return Proc(
            self.label,
            python_argv("-m", "dramatiq", "benchmarks.contender_dramatiq", "--processes", "1"),
            self.log(),
            env,
        )


def oslo_notifications(n: int) -> Iterator[bytes]:
    """``n`` info notifications byte for byte as an oslo.messaging ``Notifier`` (driver
    messagingv2) publishes them (envelope 2.0, each with its own message_id)."""
    for _ in range(n):
        inner = json.dumps(
            {
                "message_id": str(uuid.uuid4()),
                "publisher_id": "bench.host",
                "event_type": "bench.event",
                "priority": "INFO",
                "payload": {},
                "timestamp": "2026-01-01 00:00:00.000000",
            }
        )
        yield json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode()


class RpcworkerNotification(Run):
    """rpcworker with one ``notification`` binding (oslo's listener topology)."""

    label = "rpcworker (notification binding)"

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        super().__init__(broker, uid, workdir)
        self.exchange, self.topic = f"{uid}-x", f"{uid}-n"
        self.queue = f"{self.topic}.info"
        self.queues = [self.queue, *(f"{self.queue}.retry.{t}" for t in RETRY_TTLS_MS)]
        self.exchanges = [self.exchange]

    def declare(self) -> None:
        # what oslo.messaging's notifier and listener (and rpcworker) declare by default
        exchange = kombu.Exchange(self.exchange, type="topic", durable=False)
        self.broker.declare(
            kombu.Queue(
                self.queue, exchange, routing_key=self.queue, durable=False, auto_delete=False
            )
        )

    def prefill(self, n: int) -> None:
        self.broker.publish_many(self.exchange, self.queue, oslo_notifications(n))

    def start(self, env: dict[str, str]) -> Proc:
        conf = self.workdir / f"{self.uid}.conf"
        conf.write_text(
            f"[DEFAULT]\nbindings = bench\nhost = {self.uid}\n\n"
            f"{self.broker.address.config_section()}\n"
            f"[binding:bench]\ntype = notification\nhandler = bench_notify\n"
            f"exchange = {self.exchange}\ntopic = {self.topic}\n"
        )
        return Proc(
            self.label, python_argv("-m", "rpcworker", "--config-file", str(conf)), self.log(), env
        )


class OsloListener(RpcworkerNotification):
    """An oslo.messaging notification listener (threading executor), a no-op endpoint."""

    label = "oslo.messaging listener"

    def start(self, env: dict[str, str]) -> Proc:
        return Proc(
            self.label,
            python_argv(
                "-m",
                "benchmarks.contender_oslo_listener",
                self.broker.address.oslo_url,
                self.exchange,
                self.topic,
            ),
            self.log(),
            env,
        )


#: drain contenders, in the order of every round: key -> (class, dists it needs)
DRAIN: dict[str, tuple[type[Run], tuple[str, ...]]] = {
    "rpcworker": (RpcworkerDirect, ()),
    "rpcworker-nobudget": (RpcworkerNoBudget, ()),
    "kombu": (KombuBare, ()),
    "pyamqp": (PyamqpBare, ("amqp",)),
    "rpcworker-rpc": (RpcworkerRpc, ()),
    "oslo": (OsloServer, ("oslo.messaging",)),
    "celery": (CeleryWorker, ("celery",)),
    "dramatiq": (DramatiqWorker, ("dramatiq", "pika")),
    "rpcworker-notify": (RpcworkerNotification, ()),
    "oslo-notify": (OsloListener, ("oslo.messaging",)),
}


class NamekoWorker(Run):
    """A nameko service with one event handler (``nameko run``, its defaults)."""

    label = "nameko"

    def __init__(self, broker: Broker, uid: str, workdir: Path) -> None:
        super().__init__(broker, uid, workdir)
        self.source, self.service = f"{uid}-src", uid.replace("-", "_")
        self.queue = f"evt-{self.source}-bench--{self.service}.noop"
        self.queues, self.exchanges = [self.queue], [f"{self.source}.events"]

    def declare(self) -> None:
        # as nameko's EventHandler.setup() and get_event_exchange() declare them
        exchange = kombu.Exchange(f"{self.source}.events", type="topic", durable=True)
        self.broker.declare(
            kombu.Queue(self.queue, exchange, routing_key="bench", durable=True, auto_delete=False)
        )

    def prefill(self, n: int) -> None:
        self.broker.publish_many(f"{self.source}.events", "bench", [b"{}"] * n)

    def start(self, env: dict[str, str]) -> Proc:
        env = {
            **env,
            "RPCWORKER_BENCH_NAMEKO_SOURCE": self.source,
            "RPCWORKER_BENCH_NAMEKO_SERVICE": self.service,
        }
        nameko = str(Path(sys.executable).with_name("nameko"))
        return Proc(
            self.label,
            [
                nameko,
                "run",
                "benchmarks.contender_nameko:BenchService",
                "--broker",
                self.broker.address.kombu_url,
            ],
            self.log(),
            env,
        )


DRAIN["nameko"] = (NamekoWorker, ("nameko",))
