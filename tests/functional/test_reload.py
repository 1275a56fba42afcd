"""SIGHUP re-reads the configuration: log levels, bindings and handlers; only what
changed is re-bound, and in-flight messages are neither lost nor handled twice."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import broker_section, consumer_count, message_count
from tests.functional.support import PikaClient, queue_drained, records
from tests.helpers import wait_for


def config(
    uid: str, records_path: Path, bindings: dict[str, dict[str, Any]], debug: bool = False
) -> str:
    lines = [
        "[DEFAULT]",
        f"bindings = {', '.join(bindings)}",
        f"host = r-{uid}",
        f"debug = {str(debug).lower()}",
        "graceful_shutdown_timeout = 20",
        "",
        broker_section(),
        "[recorder]",
        f"path = {records_path}",
        "",
    ]
    for name, options in bindings.items():
        lines.append(f"[binding:{name}]")
        lines += [f"{k} = {v}" for k, v in options.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def direct(uid: str, name: str, *keys: str) -> dict[str, Any]:
    return {
        "type": "direct",
        "handler": "recorder",
        "exchange": f"ex-{uid}",
        "queue": f"{name}-{uid}",
        "routing_key": ", ".join(keys),
    }


@pytest.fixture
def setup(daemon_factory: Any, tmp_path: Path, uid: str, workers: Any) -> Any:
    rec = tmp_path / "records.jsonl"
    workers.queues |= {f"a-{uid}", f"b-{uid}"}
    workers.exchanges |= {f"ex-{uid}"}
    d = daemon_factory(config(uid, rec, {"a": direct(uid, "a", "k1")}))
    d.records_path = str(rec)
    d.wait_consuming(f"a-{uid}")

    def rewrite(bindings: dict[str, dict[str, Any]], debug: bool = False) -> None:
        d.config_path.write_text(config(uid, rec, bindings, debug))

    d.rewrite = rewrite
    return d


def test_reload_adds_changes_and_removes_bindings(setup: Any, amqp: PikaClient, uid: str) -> None:
    d = setup
    d.rewrite({"a": direct(uid, "a", "k2"), "b": direct(uid, "b", "k3")})
    d.signal(signal.SIGHUP)
    d.wait_consuming(f"b-{uid}")
    d.wait_log("SIGHUP: bindings added ['b'], removed none, changed ['a']")
    for key in ("k1", "k2", "k3"):
        amqp.publish(f"ex-{uid}", key, {"method": "record", "args": {"key": key}}, mandatory=False)
    wait_for(lambda: len(records(d, method="record")) == 2, 10, message="k2 and k3 handled")
    assert sorted(r["args"]["key"] for r in records(d, method="record")) == ["k2", "k3"]
    assert message_count(f"a-{uid}") == 0  # k1 is no longer bound to queue a
    d.rewrite({"b": direct(uid, "b", "k3")})
    d.signal(signal.SIGHUP)
    wait_for(lambda: consumer_count(f"a-{uid}") == 0, 10, message="binding a removed")
    assert consumer_count(f"b-{uid}") == 1 and d.alive()


def test_reload_during_a_slow_handler_neither_loses_nor_duplicates(
    setup: Any, amqp: PikaClient, uid: str
) -> None:
    d = setup
    amqp.publish(f"ex-{uid}", "k1", {"method": "slow", "args": {"seconds": 2, "tag": "s"}})
    wait_for(lambda: records(d, kind="start"), 10, message="the slow handler started")
    d.rewrite({"a": direct(uid, "a", "k1", "k9")})  # binding a changes while in flight
    d.signal(signal.SIGHUP)
    d.wait_log("changed ['a']")
    wait_for(lambda: records(d, kind="rpc", method="slow"), 10, message="slow finished")
    d.wait_log("binding a: previous consumer closed")
    wait_for(lambda: queue_drained(f"a-{uid}"), 10, message="nothing unacked")
    amqp.publish(f"ex-{uid}", "k9", {"method": "record", "args": {"new": True}})
    wait_for(lambda: records(d, method="record"), 10, message="the new key handled")
    assert len(records(d, kind="rpc", method="slow")) == 1
    assert len(records(d, kind="start")) == 1  # not redelivered, not run twice
    assert d.stop() == 0


def test_reload_turns_debug_logging_on(setup: Any, amqp: PikaClient, uid: str) -> None:
    d = setup
    d.rewrite({"a": direct(uid, "a", "k1")}, debug=True)
    d.signal(signal.SIGHUP)
    d.wait_log("SIGHUP: bindings unchanged")
    amqp.publish(f"ex-{uid}", "k1", {"method": "record", "args": {}})
    d.wait_log("DEBUG rpcworker.engine")


def test_bad_configuration_on_reload_is_refused_and_the_worker_goes_on(
    setup: Any, amqp: PikaClient, uid: str
) -> None:
    d = setup
    d.rewrite(
        {
            "a": {
                "type": "direct",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": f"a-{uid}",
            }
        }
    )  # a direct binding without routing_key
    d.signal(signal.SIGHUP)
    d.wait_log("the new configuration is refused")
    assert "[binding:a] routing_key" in d.log()
    amqp.publish(f"ex-{uid}", "k1", {"method": "record", "args": {"still": 1}})
    wait_for(lambda: records(d, method="record"), 10, message="still serving")
    assert d.alive()
