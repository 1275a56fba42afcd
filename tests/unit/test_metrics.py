"""The metrics: the listen option, the instruments, the probes, the HTTP endpoints."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from rpcworker.daemon import endpoints, instruments
from rpcworker.daemon.supervisor import Hub
from rpcworker.engine.readiness import NullNotifier
from rpcworker.errors import ConfigError
from rpcworker.policy.outcomes import Action, Delivery, Outcome
from tests.fakes import BINDING, Box, Clock, FakeMessage, Sink
from tests.helpers import http_get as get

# -- [metrics] listen ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", None),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_values_accepted(value: str, expected: tuple[str, int] | None) -> None:
    assert endpoints.parse_listen(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "9464",
        ":9464",
        "host:",
        "host:0",
        "host:65536",
        "host:http",
        "::1:9464",
        "[nothost]:9464",
        "a b:80",
    ],
)
def test_bad_listen_values_are_a_config_error_naming_the_option(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        endpoints.parse_listen(value)
    assert (info.value.group, info.value.option) == ("metrics", "listen")
    assert "\n" not in str(info.value) and str(info.value).startswith("[metrics] listen: ")


# -- the instruments ----------------------------------------------------------------------


def sample(m: instruments.Metrics, name: str, binding: str | None = "b") -> float | None:
    labels = {"binding": binding} if binding is not None else {}
    return m.registry.get_sample_value(name, labels)


def test_counters_exist_at_zero_for_every_binding() -> None:
    m = instruments.Metrics(["b", "c"])
    for name in ("received", "acked", "rejected", "retried", "dead_lettered", "failed"):
        assert sample(m, f"rpcworker_{name}_total", "c") == 0
    assert sample(m, "rpcworker_inflight", "c") == 0
    assert sample(m, "rpcworker_connected", None) == 0


def test_run_handler_times_the_handler_and_counts_failures() -> None:
    m = instruments.Metrics(["b"])
    seen = []

    def ok() -> Outcome:
        seen.append(sample(m, "rpcworker_inflight"))
        return Outcome(Action.ACK)

    assert m.run_handler("b", ok) == Outcome(Action.ACK)
    m.run_handler("b", lambda: Outcome(Action.RETRY, reason="ValueError: boom"))
    assert seen == [1.0]
    assert sample(m, "rpcworker_inflight") == 0
    assert sample(m, "rpcworker_failed_total") == 1
    assert sample(m, "rpcworker_handler_duration_seconds_count") == 2


def test_connection_state_reconnects_and_consuming() -> None:
    m = instruments.Metrics(["b"])
    m.connected(first=True)
    m.consuming("b", True)
    assert sample(m, "rpcworker_connected", None) == 1
    assert sample(m, "rpcworker_binding_consuming") == 1
    m.disconnected()
    assert sample(m, "rpcworker_connected", None) == 0
    assert sample(m, "rpcworker_binding_consuming") == 0
    m.connected(first=False)
    assert sample(m, "rpcworker_reconnects_total", None) == 1


@pytest.fixture
def conn() -> Iterator[kombu.Connection]:
    c = kombu.Connection("memory://")
    for name in ("q", "q.retry.1000", "parked"):
        kombu.Queue(name)(c.channel()).declare()
    yield c
    for name in ("q", "q.retry.1000", "parked"):  # memory:// is shared by the process
        kombu.Queue(name)(c.channel()).purge()
    c.release()


def test_settle_counts_where_each_delivery_is_settled(conn: kombu.Connection) -> None:
    m = instruments.Metrics(["b"])
    box = Box(conn, listener=m)
    box.settle(Delivery(FakeMessage(), BINDING, "q", None), Outcome(Action.ACK))
    box.settle(Delivery(FakeMessage(), BINDING, "q", None), Outcome(Action.RETRY, reason="x"))
    box.settle(Delivery(FakeMessage(), BINDING, "q", None), Outcome(Action.DEAD_LETTER, reason="x"))
    no_lot = dataclasses.replace(BINDING, dead_letter_queue=None)
    box.settle(Delivery(FakeMessage(), no_lot, "q", None), Outcome(Action.DEAD_LETTER, reason="x"))
    # ack, retry (copy confirmed, then ack), dead letter (copy, then ack), and a dead
    # letter without a parking lot (reject)
    assert sample(m, "rpcworker_acked_total") == 3
    assert sample(m, "rpcworker_retried_total") == 1
    assert sample(m, "rpcworker_dead_lettered_total") == 2
    assert sample(m, "rpcworker_rejected_total") == 1


# -- liveness and readiness ---------------------------------------------------------------


def test_loop_probe_is_healthy_while_the_loop_ticks() -> None:
    clock = Clock()
    probe = endpoints.LoopProbe(NullNotifier(), clock=clock)
    assert probe.health()[0]
    clock.advance(endpoints.STALE_AFTER - 1)
    probe.watchdog()
    clock.advance(endpoints.STALE_AFTER - 1)
    assert probe.health()[0]
    clock.advance(2)
    ok, reason = probe.health()
    assert not ok and "silent" in reason


def test_loop_probe_readiness_gives_the_last_status_line() -> None:
    sink = Sink()
    probe = endpoints.LoopProbe(sink)
    assert probe.readiness(False) == (False, "not connected to the broker yet")
    probe.ready("consuming 1 of 1 binding(s); 0 reconnect(s)")
    assert probe.readiness(True) == (True, "consuming 1 of 1 binding(s); 0 reconnect(s)")
    assert probe.readiness(False) == (False, "not connected to the broker")
    probe.status("reconnecting to the broker (ConnectionResetError)")
    assert probe.readiness(False) == (False, "reconnecting to the broker (ConnectionResetError)")
    assert sink.take() == [
        "READY=1 STATUS=consuming 1 of 1 binding(s); 0 reconnect(s)",
        "STATUS=reconnecting to the broker (ConnectionResetError)",
    ]


def test_hub_health_and_readiness() -> None:
    clock = Clock()
    hub = Hub(2, Sink(), None, clock=clock, alive=lambda pid: True)
    hub.on_event(0, 100, "hello")
    hub.on_event(1, 101, "hello")
    assert hub.readiness()[0] is False
    hub.on_event(0, 100, "ready", True, "consuming 1 of 1 binding(s)")
    hub.on_event(1, 101, "ready", True, "consuming 1 of 1 binding(s)")
    assert hub.readiness() == (True, "2/2 workers consuming: consuming 1 of 1 binding(s)")
    hub.on_event(1, 101, "status", False, "reconnecting to the broker")
    ok, reason = hub.readiness()
    assert not ok and reason.startswith("1/2 workers consuming")
    clock.advance(20)
    hub.on_event(0, 100, "watchdog", True)
    clock.advance(15)  # worker 1 silent for 35 s, worker 0 for 15 s
    ok, reason = hub.health(30)
    assert not ok and "worker 1 (pid 101)" in reason and "worker 0" not in reason
    assert hub.pid_of(1) == 101 and hub.pid_of(7) is None


# -- the HTTP endpoint --------------------------------------------------------------------


def test_endpoint_routes() -> None:
    m = instruments.Metrics(["b"])
    m.received("b")
    state = {"ready": (False, "reconnecting to the broker")}
    endpoint = endpoints.Endpoint(
        ("127.0.0.1", 0),
        lambda: b"rpcworker_x 1\n",
        lambda: (True, "consume loop alive"),
        lambda: state["ready"],
    ).start()
    try:
        assert get(endpoint.port, "/metrics") == (200, "rpcworker_x 1\n")
        assert get(endpoint.port, "/healthz") == (200, "consume loop alive\n")
        assert get(endpoint.port, "/readyz") == (503, "reconnecting to the broker\n")
        state["ready"] = (True, "consuming")
        assert get(endpoint.port, "/readyz") == (200, "consuming\n")
        assert get(endpoint.port, "/nope")[0] == 404
    finally:
        endpoint.close()


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            endpoints.Endpoint(
                ("127.0.0.1", port), lambda: b"", lambda: (True, ""), lambda: (True, "")
            )
    assert str(info.value).startswith(f"[metrics] listen: cannot listen on 127.0.0.1:{port}")


def test_listeners_tell_each_delivery_only_to_those_that_listen() -> None:
    """``Listeners`` calls ``received`` and ``settled`` (once per delivery) only on the
    listeners whose class overrides them; the rest, on every listener, in order."""
    from rpcworker.engine.events import Listener, Listeners

    heard: list[str] = []

    class Counts(Listener):
        def received(self, binding: str) -> None:
            heard.append(f"received {binding}")

    class Settles(Listener):
        def settled(self, delivery: Any, outcome: Any) -> None:
            heard.append("settled")

        def connected(self, first: bool) -> None:
            heard.append(f"connected {first}")

    listeners = Listeners([Counts(), Settles(), Listener()])
    assert len(listeners._received) == 1 and len(listeners._settled) == 1
    listeners.received("b")
    listeners.settled(None, None)  # type: ignore[arg-type]
    listeners.connected(True)
    assert heard == ["received b", "settled", "connected True"]
