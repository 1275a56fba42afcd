"""An inventory service, written as an rpcworker handler plugin.

* public methods are RPC methods, called as ``method(ctxt, **args)``;
* the return value (JSON) is the reply of a call;
* ``target`` gives the namespace/version callers must ask for;
* ``handle_message`` receives events (messages without a ``method``);
* raising ``rpcworker.Reject`` refuses a message for good, any other exception
  is returned to a caller as a remote error.
"""

from __future__ import annotations

import threading
from typing import Any

from oslo_config import cfg

import rpcworker

opts = [
    cfg.IntOpt(
        "max_quantity",
        default=1000,
        min=1,
        help="Largest quantity of one item the inventory accepts.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("inventory", opts)]


class Target:
    namespace = "inventory"
    version = "1.1"


class InventoryHandler:
    """Keep item counts; answers add/remove/count calls and 'item.deleted' events."""

    target = Target()

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(opts, group="inventory")
        self.max_quantity = conf.inventory.max_quantity
        self._items: dict[str, int] = {}
        # handlers run in a thread pool: protect shared state
        self._lock = threading.Lock()

    def add(self, ctxt: dict[str, Any], item: str, quantity: int = 1) -> int:
        """Add ``quantity`` of ``item``; return the new count."""
        if not isinstance(quantity, int) or quantity < 1:
            raise ValueError(f"quantity must be a positive integer, not {quantity!r}")
        with self._lock:
            total = self._items.get(item, 0) + quantity
            if total > self.max_quantity:
                raise ValueError(f"{item}: {total} is over max_quantity {self.max_quantity}")
            self._items[item] = total
            return total

    def remove(self, ctxt: dict[str, Any], item: str, quantity: int = 1) -> int:
        """Remove ``quantity`` of ``item``; return the new count."""
        with self._lock:
            have = self._items.get(item, 0)
            if quantity > have:
                raise ValueError(f"{item}: only {have} left")
            self._items[item] = have - quantity
            return have - quantity

    def count(self, ctxt: dict[str, Any], item: str) -> int:
        """How many of ``item`` there are."""
        with self._lock:
            return self._items.get(item, 0)

    def handle_message(self, message: rpcworker.Message) -> None:
        """Events: {"event_type": "item.deleted", "item": NAME} forgets an item."""
        body = message.body
        if not isinstance(body, dict) or not isinstance(body.get("item"), str):
            raise rpcworker.Reject(f"not an inventory event: {body!r}")
        if body.get("event_type") == "item.deleted":
            with self._lock:
                self._items.pop(body["item"], None)
