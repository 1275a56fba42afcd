"""SIGHUP, on the engine's side: carry out a re-binding plan (``config.reloadplan.Plan``:
what the configuration side read, and what changed) on the current connection.

A removed or changed binding stops taking deliveries (basic.cancel) but keeps its
channel until its in-flight messages are settled, so nothing is lost or handled twice
(``close_retired``, once per loop turn); a new or changed binding is declared and
consumed at once; the routing keys a changed binding no longer has are unbound. The
engine never reads the configuration: the worker asks the configuration side for the
plan. Loop thread only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from oslo_log import log as logging

from rpcworker.amqp import topology
from rpcworker.amqp.topology import Topology
from rpcworker.config.bindingconf import Binding
from rpcworker.config.reloadplan import Plan
from rpcworker.engine.subscriptions import Bound, Subscriptions
from rpcworker.errors import oneline

LOG = logging.getLogger(__name__)


class Rebinding:
    def __init__(self, subscriptions: Subscriptions, stable_instance: str | None = None) -> None:
        self.subscriptions = subscriptions
        #: the queue manager's name of this process (None: each re-bound binding gets a new
        #: uuid, so a changed binding's old fanout queue is not the new one)
        self._instance = stable_instance
        #: bindings taken away by a reload, kept open until their in-flight work is settled
        self._retiring: list[Bound] = []

    @property
    def retiring(self) -> bool:
        return bool(self._retiring)

    def lost(self) -> None:
        """The connection is gone, with the retired bindings' channels."""
        self._retiring = []

    def apply(self, plan: Plan) -> None:
        """Re-bind what ``plan`` changed: retire removed and changed bindings, declare
        new and changed ones, unbind the keys a changed one no longer has."""
        subs = self.subscriptions
        subs.handlers.update(plan.new_handlers)
        if plan.empty:
            LOG.info("SIGHUP: bindings unchanged")
            return
        old = {t.binding.name: t for t in subs.topologies}
        for name in plan.removed + plan.changed:
            bound = subs.withdraw(name)
            if bound is not None:
                self._retiring.append(bound)
        fresh = set(plan.added) | set(plan.changed)
        subs.topologies = [
            topology.build(b, self._instance) if b.name in fresh else old[b.name]
            for b in plan.bindings
        ]
        for topo in subs.topologies:
            if topo.binding.name in fresh:
                subs.declare(topo)
                if topo.binding.name in old:
                    self._unbind_dropped_keys(old[topo.binding.name], topo)
        LOG.info(
            "SIGHUP: bindings added %s, removed %s, changed %s",
            plan.added or "none",
            plan.removed or "none",
            plan.changed or "none",
        )

    def close_retired(self, busy: Callable[[Binding], bool]) -> None:
        """Close the retired bindings' channels whose in-flight work is settled."""
        for bound in list(self._retiring):
            if busy(bound.topology.binding):
                continue
            self._retiring.remove(bound)
            for name in bound.topology.transient:
                with contextlib.suppress(Exception):
                    bound.channel.queue_delete(name)
            with contextlib.suppress(Exception):
                bound.channel.close()
            LOG.info(
                "binding %s: previous consumer closed, its in-flight work settled",
                bound.topology.binding.name,
            )

    def _unbind_dropped_keys(self, before: Topology, after: Topology) -> None:
        """Remove queue bindings (exchange, routing key) that the new config no longer has."""

        def keys(t: Topology) -> dict[str, set[tuple[str, str]]]:
            return {
                q.name: {(b.exchange.name, b.routing_key) for b in q.bindings}
                | ({(q.exchange.name, q.routing_key)} if q.exchange and q.exchange.name else set())
                for q in t.queues
            }

        conn = self.subscriptions.connection
        now = keys(after)
        for queue, pairs in keys(before).items():
            if queue not in now:
                continue
            for exchange, key in sorted(pairs - now[queue]):
                try:
                    conn.default_channel.queue_unbind(queue, exchange, key or "")
                    LOG.info(
                        "binding %s: queue %s unbound from %s with key %r",
                        after.binding.name,
                        queue,
                        exchange,
                        key,
                    )
                except tuple(conn.channel_errors) as exc:
                    LOG.warning(
                        "binding %s: could not unbind %s from %s (%r): %s",
                        after.binding.name,
                        queue,
                        exchange,
                        key,
                        oneline(exc),
                    )
