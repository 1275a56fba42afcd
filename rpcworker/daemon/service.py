"""Process lifecycle: build the worker from conf, signals, graceful stop.

``workers = 1``: ``build()`` then ``run()`` in this process. ``workers`` > 1:
``validate()`` here, then ``rpcworker.daemon.supervisor.run()`` forks the workers, each
of which calls ``build()``.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.amqp import broker, topology
from rpcworker.config import bindingconf, plugins
from rpcworker.config.bindingconf import Binding
from rpcworker.daemon import endpoints, instruments, lotdepth, systemd
from rpcworker.engine import recycling
from rpcworker.engine.events import NULL
from rpcworker.engine.executor import Executor
from rpcworker.engine.readiness import Notifier
from rpcworker.engine.worker import Worker
from rpcworker.errors import ConfigError

LOG = logging.getLogger(__name__)


def check_budget(conf: cfg.ConfigOpts) -> None:
    """``max_inflight_bytes`` must hold the largest message (or be 0: no budget)."""
    budget, largest = conf.max_inflight_bytes, conf.max_message_size
    if budget and budget < largest:
        raise ConfigError(
            "DEFAULT",
            "max_inflight_bytes",
            f"{budget} is less than max_message_size ({largest}): the budget "
            "must hold the largest message (or be 0: no budget)",
        )


def validate(conf: cfg.ConfigOpts) -> tuple[list[Binding], dict[str, Any], broker.BrokerSettings]:
    """Everything that can be checked without the broker: the bindings, the handler
    instances and the broker settings. Raises ConfigError/PluginError.

    The supervisor calls it before forking and drops the handlers: each worker process
    makes its own in ``build()``.
    """
    endpoints.listen_address(conf)
    check_budget(conf)
    parsed = bindingconf.parse(conf)
    handlers = plugins.load(conf, parsed)
    parsed = plugins.resolve_priorities(parsed, handlers)
    return parsed, handlers, broker.settings(conf)


def build(
    conf: cfg.ConfigOpts,
    notifier: Notifier | None = None,
    serve_metrics: bool = True,
    may_recycle: Callable[[], bool] | None = None,
    worker_index: int = 0,
) -> Worker:
    """Everything a worker process needs, from a prepared conf (raises ConfigError/PluginError).

    ``notifier``: where the loop's systemd notifications go (default: ``$NOTIFY_SOCKET``).
    ``serve_metrics``: with ``[metrics] listen``, start the HTTP endpoint here (false in
    the worker processes of a supervisor, which serves it). ``may_recycle``: whether the
    process may recycle itself now (a supervisor's workers take turns).
    ``worker_index``: this process's number among the supervisor's (0 .. workers - 1),
    which names its per-process queues with ``use_queue_manager``.
    """
    parsed, handlers, settings = validate(conf)
    # after validate(): binding and plugin groups are registered; secrets print as ****
    conf.log_opt_values(LOG, std_logging.DEBUG)
    warn_consumer_timeout(conf, parsed)
    instance = topology.process_instance(parsed, worker_index)
    topologies = [topology.build(b, instance) for b in parsed]
    executor = Executor(conf.executor_thread_pool_size)
    LOG.info(
        "rpcworker starting: broker %s, bindings %s, %d handler threads",
        broker.describe(settings),
        ", ".join(b.name for b in parsed),
        conf.executor_thread_pool_size,
    )
    sink = notifier if notifier is not None else systemd.from_environment()
    address = endpoints.listen_address(conf)
    probe = endpoints.LoopProbe(sink) if address is not None and serve_metrics else None
    recorder = instruments.Metrics([b.name for b in parsed]) if address is not None else None
    if recorder is not None and serve_metrics:
        depth = lotdepth.ParkedDepth.for_bindings(conf, settings, parsed)
        if depth is not None:
            recorder.registry.register(depth)
    worker = Worker(
        conf,
        broker.connection(conf, settings),
        topologies,
        handlers,
        executor,
        notifier=probe or sink,
        recorder=recorder or NULL,
        may_recycle=may_recycle,
        stable_instance=instance if any(b.queue_manager for b in parsed) else None,
    )
    if address is not None and recorder is not None and probe is not None:
        endpoints.serve_process(address, recorder.registry, probe, worker)
    return worker


def warn_consumer_timeout(conf: cfg.ConfigOpts, parsed: list[Binding]) -> None:
    """A delivery unacked past the broker's consumer_timeout closes the whole channel."""
    limit = conf.broker.consumer_timeout
    if not limit:
        return
    for b in parsed:
        if b.ack_before:
            continue
        if not b.handler_timeout or b.handler_timeout >= limit:
            LOG.warning(
                "binding %s: handler_timeout (%s) is not below the broker's "
                "consumer_timeout ([broker] consumer_timeout = %s s): a handler "
                "running that long makes the broker close the channel and redeliver "
                "every message in flight on it",
                b.name,
                f"{b.handler_timeout:g} s" if b.handler_timeout else "unlimited",
                limit,
            )


class _Signals:
    """Signal handlers only record the signal and wake the loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.count = 0

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.worker.request_stop()
        else:  # a second SIGTERM/SIGINT: stop waiting for handlers
            self.worker.request_stop(immediate=True)

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.worker.request_reload()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_hup)


def run(conf: cfg.ConfigOpts, worker: Worker) -> int:
    """Run ``worker`` in this (main) thread until SIGTERM/SIGINT; return the exit status."""
    _Signals(worker).install()
    try:
        worker.run()
    finally:
        worker.executor.shutdown(wait=False)
    if worker.drain.recycling is not None:
        LOG.info(
            "rpcworker recycled (%s): a fresh process takes over, same pid", worker.drain.recycling
        )
        std_logging.shutdown()
        recycling.reexec()
    LOG.info("rpcworker stopped")
    if any(t.name.startswith("rpcworker-handler") and t.is_alive() for t in threading.enumerate()):
        # handler threads still busy after graceful_shutdown_timeout: their
        # deliveries were left unacked (redelivered); do not wait for them
        std_logging.shutdown()
        os._exit(0)
    return 0
