"""The supervisor's aggregation of worker notifications (``Hub``) and the child's
forwarding notifier, as pure logic: an injected clock, a recording sink."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rpcworker.daemon.supervisor import (
    HELLO,
    READY,
    RELOADING,
    STATUS,
    STOPPING,
    WATCHDOG,
    ChildNotifier,
    Hub,
)
from rpcworker.errors import ConfigError
from tests.fakes import Clock, Sink

USEC = 10_000_000  # WATCHDOG_USEC: a 10 s window
OK = "consuming 2 of 2 binding(s); 0 reconnect(s)"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink() -> Sink:
    return Sink()


class Pids:
    """The fake process table the hub checks pids against."""

    def __init__(self) -> None:
        self.gone: set[int] = set()

    def __call__(self, pid: int) -> bool:
        return pid not in self.gone


@pytest.fixture
def pids() -> Pids:
    return Pids()


@pytest.fixture
def hub(clock: Clock, sink: Sink, pids: Pids) -> Hub:
    return Hub(2, sink, USEC, extend_seconds=70, clock=clock, alive=pids)


def start_both(hub: Hub) -> None:
    for wid, pid in ((0, 100), (1, 101)):
        hub.on_event(wid, pid, HELLO)
        hub.on_event(wid, pid, READY, True, OK)


# -- READY ------------------------------------------------------------------------------


def test_ready_only_once_every_worker_is_ready(hub: Hub, sink: Sink) -> None:
    hub.on_event(0, 100, HELLO)
    hub.on_event(1, 101, HELLO)
    hub.on_event(0, 100, READY, True, OK)
    assert sink.count("READY=1") == 0
    assert sink.sent[-1] == f"STATUS=1/2 workers consuming: worker 0: {OK}; worker 1: starting"
    hub.on_event(1, 101, READY, True, OK)
    assert sink.sent[-1] == f"READY=1 STATUS=2/2 workers consuming: {OK}"
    # once: more ready events (a reconnect) only update STATUS
    hub.on_event(1, 101, STATUS, False, "reconnecting to the broker (boom)")
    hub.on_event(1, 101, READY, True, OK.replace("0 reconnect", "1 reconnect"))
    assert sink.count("READY=1") == 1


def test_ready_needs_every_worker_not_one_worker_twice(hub: Hub, sink: Sink) -> None:
    hub.on_event(0, 100, READY, True, OK)
    hub.on_event(0, 100, READY, True, OK)
    assert sink.count("READY=1") == 0


def test_a_worker_that_lost_its_connection_holds_ready_back(hub: Hub, sink: Sink) -> None:
    hub.on_event(0, 100, READY, True, OK)
    hub.on_event(0, 100, STATUS, False, "reconnecting to the broker (x)")
    hub.on_event(1, 101, READY, True, OK)
    assert sink.count("READY=1") == 0
    hub.on_event(0, 100, READY, True, OK)
    assert sink.count("READY=1") == 1


def test_a_worker_missing_a_binding_holds_ready_back(hub: Hub, sink: Sink) -> None:
    hub.on_event(0, 100, READY, True, OK)
    hub.on_event(
        1, 101, STATUS, False, "consuming 1 of 2 binding(s); 0 reconnect(s); not declared: b"
    )
    assert sink.count("READY=1") == 0
    assert sink.sent[-1] == (
        f"STATUS=1/2 workers consuming: worker 0: {OK}; worker 1: consuming "
        "1 of 2 binding(s); 0 reconnect(s); not declared: b"
    )


def test_ready_again_after_reload_once_every_worker_reloaded(hub: Hub, sink: Sink) -> None:
    start_both(hub)
    sink.take()
    hub.on_reload()
    assert sink.take() == ["RELOADING=1"]
    # a ready event that predates the reload (still queued) does not count
    hub.on_event(0, 100, READY, True, OK)
    hub.on_event(0, 100, RELOADING, True)
    hub.on_event(0, 100, READY, True, OK)
    hub.on_event(1, 101, READY, True, OK)
    assert sink.count("READY=1") == 0
    hub.on_event(1, 101, RELOADING, True)
    hub.on_event(1, 101, READY, True, OK)
    assert sink.count("READY=1") == 1


def test_a_worker_restarted_during_a_reload_counts_as_reloaded(hub: Hub, sink: Sink) -> None:
    start_both(hub)
    hub.on_reload()
    sink.take()
    hub.on_event(0, 100, RELOADING, True)
    hub.on_event(0, 100, READY, True, OK)
    hub.on_dead(1, -9)
    hub.on_event(1, 202, HELLO)  # forked after the reload: runs the new configuration
    hub.on_event(1, 202, READY, True, OK)
    assert sink.count("READY=1") == 1


def test_no_ready_while_stopping(hub: Hub, sink: Sink) -> None:
    hub.on_event(0, 100, READY, True, OK)
    hub.on_stop()
    hub.on_event(1, 101, READY, True, OK)
    assert sink.count("READY=1") == 0


# -- crashes and restarts --------------------------------------------------------------------


def test_dead_worker_leaves_the_count_and_its_late_events_are_ignored(hub: Hub, sink: Sink) -> None:
    start_both(hub)
    hub.on_dead(1, 70)
    assert sink.sent[-1] == f"STATUS=1/2 workers consuming: worker 0: {OK}"
    hub.on_event(1, 101, READY, True, OK)  # sent before it died, read after the reaping
    assert hub.pids == [100]
    hub.on_event(1, 202, HELLO)
    hub.on_event(1, 202, READY, True, OK)
    assert sorted(hub.pids) == [100, 202]
    assert sink.sent[-1] == f"STATUS=2/2 workers consuming: {OK}"
    assert sink.count("READY=1") == 1  # systemd was told once, at start


def test_a_new_pid_replaces_the_old_one_even_before_its_death_is_reported(hub: Hub) -> None:
    start_both(hub)
    hub.on_event(1, 202, HELLO)
    assert sorted(hub.pids) == [100, 202]
    hub.on_event(1, 101, WATCHDOG, True)  # the old process: ignored from now on
    assert sorted(hub.pids) == [100, 202]


def test_a_worker_whose_death_was_not_reported_is_forgotten(
    hub: Hub, sink: Sink, clock: Clock, pids: Pids
) -> None:
    start_both(hub)
    clock.advance(30)
    hub.on_event(0, 100, WATCHDOG, True)
    pids.gone.add(101)
    sink.take()
    hub.tick()
    assert hub.pids == [100]
    assert "WATCHDOG=1" in sink.take()
    hub.on_event(1, 101, WATCHDOG, True)  # late: ignored
    assert hub.pids == [100]


def test_a_recycled_pid_is_accepted_from_a_new_worker(hub: Hub, pids: Pids) -> None:
    start_both(hub)
    hub.on_dead(1, -9)
    pids.gone.add(101)
    hub.on_event(1, 101, READY, True, OK)  # the dead one's, read late
    assert hub.pids == [100]
    pids.gone.discard(101)  # the pid is given to the new worker
    hub.on_event(1, 101, HELLO)
    assert sorted(hub.pids) == [100, 101]


def test_an_event_without_hello_registers_the_worker(hub: Hub, sink: Sink) -> None:
    hub.on_event(0, 100, READY, True, OK)  # the hello datagram was dropped
    hub.on_event(1, 101, READY, True, OK)
    assert sink.count("READY=1") == 1


# -- WATCHDOG -------------------------------------------------------------------------------


def test_watchdog_while_every_worker_reports(hub: Hub, sink: Sink, clock: Clock) -> None:
    start_both(hub)
    sink.take()
    for _ in range(10):
        clock.advance(2.5)
        hub.on_event(0, 100, WATCHDOG, True)
        hub.on_event(1, 101, WATCHDOG, True)
        hub.tick()
    assert sink.take() == ["WATCHDOG=1"] * 10


def test_watchdog_withheld_when_one_worker_is_silent(hub: Hub, sink: Sink, clock: Clock) -> None:
    start_both(hub)
    sink.take()
    for _ in range(3):  # worker 1 stops reporting: fine for one window (10 s) ...
        clock.advance(3)
        hub.on_event(0, 100, WATCHDOG, True)
        hub.tick()
    assert sink.take() == ["WATCHDOG=1"] * 3
    clock.advance(2)  # ... then 11 s of silence
    hub.on_event(0, 100, WATCHDOG, True)
    hub.tick()
    assert sink.take() == []
    clock.advance(20)
    hub.on_event(0, 100, WATCHDOG, True)
    hub.tick()
    assert sink.take() == []
    hub.on_event(1, 101, WATCHDOG, True)  # it is back
    hub.tick()
    assert sink.take() == ["WATCHDOG=1"]


def test_a_fresh_worker_counts_as_alive_for_one_window(hub: Hub, sink: Sink, clock: Clock) -> None:
    hub.on_event(0, 100, HELLO)
    sink.take()
    clock.advance(9)
    hub.tick()
    assert sink.take() == ["WATCHDOG=1"]
    clock.advance(2)
    hub.tick()
    assert sink.take() == []


def test_a_dead_worker_does_not_hold_the_watchdog(hub: Hub, sink: Sink, clock: Clock) -> None:
    start_both(hub)
    clock.advance(30)
    hub.on_event(0, 100, WATCHDOG, True)
    hub.tick()
    assert sink.count("WATCHDOG=1") == 0
    hub.on_dead(1, -9)
    sink.take()
    hub.tick()
    assert sink.take() == ["WATCHDOG=1"]


def test_no_watchdog_without_watchdog_usec(clock: Clock, sink: Sink) -> None:
    hub = Hub(2, sink, None, clock=clock, alive=lambda pid: True)
    start_both(hub)
    hub.tick()
    assert sink.count("WATCHDOG=1") == 0


# -- STATUS, STOPPING -----------------------------------------------------------------------


def test_status_lines(hub: Hub, sink: Sink) -> None:
    assert hub.status_line() == "0/2 workers consuming: starting"
    start_both(hub)
    assert hub.status_line() == f"2/2 workers consuming: {OK}"
    hub.on_event(0, 100, STATUS, False, "reconnecting to the broker (ConnectionResetError)")
    assert sink.sent[-1] == (
        "STATUS=1/2 workers consuming: worker 0: reconnecting to the "
        f"broker (ConnectionResetError); worker 1: {OK}"
    )
    sent = len(sink.sent)
    hub.on_event(0, 100, WATCHDOG, False)  # nothing new to say
    assert len(sink.sent) == sent
    hub.on_event(0, 100, READY, True, OK)
    assert sink.sent[-1] == f"STATUS=2/2 workers consuming: {OK}"


def test_status_groups_the_workers_that_agree(clock: Clock, sink: Sink) -> None:
    hub = Hub(3, sink, USEC, clock=clock, alive=lambda pid: True)
    hub.on_event(2, 102, READY, True, OK)
    hub.on_event(0, 100, READY, True, OK)
    hub.on_event(1, 101, STATUS, False, "reconnecting to the broker (x)")
    assert sink.sent[-1] == (
        "STATUS=2/3 workers consuming: workers 0, 2: "
        f"{OK}; worker 1: reconnecting to the broker (x)"
    )


def test_stop_sends_stopping_and_extends_the_timeout(hub: Hub, sink: Sink) -> None:
    start_both(hub)
    sink.take()
    hub.on_stop()
    assert sink.take() == [
        f"STOPPING=1 STATUS=stopping; 2/2 workers consuming: {OK}",
        "EXTEND_TIMEOUT=70",
    ]
    hub.on_event(0, 100, STOPPING, True, "draining 3 in-flight message(s)")
    hub.on_event(1, 101, STOPPING, True, "draining 0 in-flight message(s)")
    assert sink.sent[-1] == (
        "STATUS=stopping; 0/2 workers consuming: worker 0: draining 3 "
        "in-flight message(s); worker 1: draining 0 in-flight message(s)"
    )


# -- the wire between child and supervisor ----------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    outbox.setblocking(False)
    yield inbox, outbox
    inbox.close()
    outbox.close()


def received(inbox: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(inbox.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def test_child_notifier_forwards_to_the_hub(
    pair: tuple[socket.socket, socket.socket], hub: Hub, sink: Sink
) -> None:
    inbox, outbox = pair
    children = [ChildNotifier(outbox, 0, 2.5), ChildNotifier(outbox, 1, 2.5)]
    children[1].pid += 1  # two processes
    for child in children:
        child.consuming = lambda: True
        child.hello()
        child.ready(OK)
    for data in received(inbox):
        hub.handle(data)
    assert sink.count("READY=1") == 1
    hub.handle(b"not json")
    hub.handle(json.dumps({"w": 0}).encode())  # malformed: ignored


def test_child_notifier_rate_limits_watchdog(
    pair: tuple[socket.socket, socket.socket], clock: Clock
) -> None:
    inbox, outbox = pair
    child = ChildNotifier(outbox, 0, 2.5, clock=clock)
    for _ in range(100):
        child.watchdog()
    clock.advance(2.5)
    child.watchdog()
    assert [json.loads(d)["e"] for d in received(inbox)] == [WATCHDOG, WATCHDOG]
    silent = ChildNotifier(outbox, 0, None, clock=clock)
    silent.watchdog()
    assert received(inbox) == []


def test_child_notifier_never_blocks_nor_raises(pair: tuple[socket.socket, socket.socket]) -> None:
    inbox, outbox = pair
    child = ChildNotifier(outbox, 0, None)
    for _ in range(5000):  # nobody reads: the queue fills up, then datagrams are dropped
        child.status("x" * 1000)
    assert child.dropped > 0
    outbox.close()
    child.status("after close")
    child.reloading()


def test_workers_above_one_is_accepted_zero_is_not(make_conf: Callable[..., Any]) -> None:
    assert make_conf("[DEFAULT]\nworkers = 4\n").workers == 4
    with pytest.raises(ConfigError) as info:
        make_conf("[DEFAULT]\nworkers = 0\n")
    assert (info.value.group, info.value.option) == ("DEFAULT", "workers")
