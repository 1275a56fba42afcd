"""The example plugin of examples/rpcworker-inventory, tested the way README tells
plugin authors to: with rpcworker.testing.HandlerFixture on memory://."""

from __future__ import annotations

import pytest

from rpcworker.testing import HandlerFixture, RemoteFailure

inventory = pytest.importorskip("rpcworker_inventory.handler")


def test_inventory_calls_events_and_errors() -> None:
    with HandlerFixture(inventory.InventoryHandler) as fx:
        # the handler's target is namespace "inventory", version 1.1
        with pytest.raises(RemoteFailure) as info:
            fx.call("add", item="bolt", quantity=3)  # no namespace: refused
        assert info.value.exc_type == "UnsupportedVersion"


def test_inventory_with_namespace() -> None:
    with HandlerFixture(
        inventory.InventoryHandler,
        config_text="""
            [inventory]
            max_quantity = 5
            """,
        namespace="inventory",
        version="1.1",
    ) as fx:
        assert fx.call("add", item="bolt", quantity=3) == 3
        assert fx.call("remove", item="bolt") == 2
        with pytest.raises(RemoteFailure) as info:
            fx.call("add", item="bolt", quantity=10)
        assert info.value.exc_type == "ValueError" and "max_quantity 5" in str(info.value)
        fx.publish_event({"event_type": "item.deleted", "item": "bolt"})
        fx.publish_event(["not", "an", "event"])
        fx.wait_idle()
        assert fx.call("count", item="bolt") == 0
        assert fx.worker.stats.dead_lettered == 1
