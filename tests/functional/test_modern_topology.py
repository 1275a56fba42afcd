"""``[oslo_messaging_rabbit]`` on a real broker (3.10 and 4.x, whichever this pass runs
on): the queues each mode declares per process, a real oslo.messaging 18 server and
client with quorum + transient quorum + stream fanout sharing a topic with rpcworker, and
stream fanout across a lost connection (each cast handled once).

Every test uses a control exchange of its own: a quorum topic makes it durable, and the
other tests declare ``openstack`` non-durable, as oslo's default does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rpcworker_testplugin import read_records

from tests.functional.conftest import (
    BROKER_URL,
    delete_exchanges,
    delete_queues,
)
from tests.functional.support import rabbitmqctl, records
from tests.helpers import wait_for

OSLO_URL = BROKER_URL.replace("amqp://", "rabbit://").rstrip("/") + "/"

MODES = {
    "classic": "",
    "quorum": "rabbit_quorum_queue = true\nrabbit_transient_quorum_queue = true",
    "stream": "rabbit_quorum_queue = true\nrabbit_transient_quorum_queue = true\n"
    "rabbit_stream_fanout = true",
}


def oslo_section(mode: str) -> str:
    return f"[oslo_messaging_rabbit]\n{MODES[mode]}\n"


def queues_of(topic: str) -> dict[str, str]:
    """name -> type of the broker's queues for ``topic``."""
    out = rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "type")
    assert out.returncode == 0, out.stderr
    return {
        q["name"]: str(q["type"])
        for q in json.loads(out.stdout or "[]")
        if q["name"] == topic or q["name"].startswith((f"{topic}.", f"{topic}_"))
    }


@pytest.fixture
def cleanup_topic(uid: str) -> Iterator[str]:
    topic = f"mt-{uid}"
    yield topic
    delete_queues(*queues_of(topic))
    delete_exchanges(f"ex-{uid}", f"{topic}_fanout")


@pytest.mark.parametrize("mode", list(MODES))
def test_queues_per_process_in_each_mode(
    workers: Any, uid: str, cleanup_topic: str, mode: str
) -> None:
    topic = cleanup_topic
    binding = {"type": "rpc", "handler": "recorder", "topic": topic, "exchange": f"ex-{uid}"}
    workers.start({"rpc": binding}, default={"workers": 2}, extra=oslo_section(mode))
    fanout = {"classic": 2, "quorum": 2, "stream": 0}[mode]
    want_shared = 2 + 6 + (1 if mode == "stream" else 0)  # work, delay, the stream

    def declared() -> bool:
        return len(queues_of(topic)) == want_shared + fanout

    wait_for(declared, 30, message=f"the queues of two processes ({queues_of(topic)})")
    found = queues_of(topic)
    per_process = [n for n in found if n.startswith(f"{topic}_fanout_")]
    print(
        f"\n{mode}: {len(found)} queues for 2 processes, per process "
        f"{len(per_process) // 2}: {sorted(found.items())}"
    )
    assert len(per_process) == fanout
    kind = "classic" if mode == "classic" else "quorum"
    assert found[topic] == found[f"{topic}.w1-{uid}"] == kind
    assert found[f"{topic}.retry.1000{'' if mode == 'classic' else '.quorum'}"] == kind
    for name in per_process:
        assert found[name] == kind
    if mode == "stream":
        assert found[f"{topic}_fanout"] == "stream"
    # a fanout cast reaches each of the two processes once
    peer = ["--url", OSLO_URL, "--exchange", f"ex-{uid}"]
    peer += {"classic": [], "quorum": ["--quorum", "--transient"]}.get(
        mode, ["--quorum", "--transient", "--stream"]
    )
    sent = _oslo(*peer, "fanout", "--topic", topic, "record", "n=7")
    assert sent.returncode == 0, sent.stderr[-2000:]
    d = workers.daemons[-1]

    def pids() -> list[int]:
        return sorted(r["pid"] for r in records(d, method="record", args={"n": 7}))

    wait_for(lambda: len(pids()) >= 2, 30, message=f"the cast in both processes: {pids()}")
    assert len(set(pids())) == 2 == len(pids()), pids()


def _oslo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.oslo_peer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def oslo_server(tmp_path: Path, uid: str, cleanup_topic: str) -> Iterator[tuple[str, Path]]:
    """A real oslo.messaging RPC server (its own process) on the topic, with quorum,
    transient quorum and stream fanout; (its server name, its records file)."""
    record = tmp_path / "oslo-records.jsonl"
    record.touch()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.oslo_peer",
            *("--url", OSLO_URL, "--exchange", f"ex-{uid}", "--quorum", "--transient"),
            "--stream",
            *("server", "--topic", cleanup_topic, "--server", "oslo-srv"),
            *("--record", str(record)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = ""
    for line in proc.stdout:
        if line.startswith("READY"):
            break
    assert line.startswith("READY"), f"the oslo server did not start: {line}"
    yield "oslo-srv", record
    proc.terminate()
    proc.wait(timeout=30)


def test_oslo_server_and_rpcworker_share_a_quorum_and_stream_topic(
    workers: Any, uid: str, cleanup_topic: str, oslo_server: tuple[str, Path]
) -> None:
    topic = cleanup_topic
    oslo_name, oslo_records = oslo_server
    binding = {"type": "rpc", "handler": "recorder", "topic": topic, "exchange": f"ex-{uid}"}
    d = workers.start({"rpc": binding}, name="rw", extra=oslo_section("stream"))
    peer = ("--url", OSLO_URL, "--exchange", f"ex-{uid}", "--quorum", "--transient", "--stream")

    # a call to each server by name
    to_oslo = _oslo(*peer, "call", "--topic", topic, "--server", oslo_name, "record", "n=1")
    assert to_oslo.returncode == 0, to_oslo.stderr[-2000:]
    assert json.loads(to_oslo.stdout.splitlines()[-1]) == {"server": oslo_name, "n": 1}
    to_rw = _oslo(*peer, "call", "--topic", topic, "--server", f"rw-{uid}", "record", "n=2")
    assert to_rw.returncode == 0, to_rw.stderr[-2000:]
    assert json.loads(to_rw.stdout.splitlines()[-1]) == {"n": 2}
    assert records(d, method="record", args={"n": 2})

    # fanout casts: each server handles each once (the stream is shared by both)
    for n in range(10, 15):
        sent = _oslo(*peer, "fanout", "--topic", topic, "record", f"n={n}")
        assert sent.returncode == 0, sent.stderr[-2000:]

    def fanned(path: Path, key: str) -> list[int]:
        return sorted(
            r["args"]["n"] for r in read_records(str(path)) if r.get("args", {}).get("n", 0) >= 10
        )

    want = list(range(10, 15))
    wait_for(lambda: fanned(oslo_records, "n") == want, 30, message="the oslo server's casts")
    wait_for(
        lambda: fanned(Path(d.records_path), "n") == want, 30, message="rpcworker's fanout casts"
    )
    assert queues_of(topic)[f"{topic}_fanout"] == "stream"


def test_stream_fanout_across_a_lost_connection_each_cast_once(
    workers: Any, uid: str, cleanup_topic: str
) -> None:
    topic = cleanup_topic
    binding = {"type": "rpc", "handler": "recorder", "topic": topic, "exchange": f"ex-{uid}"}
    d = workers.start({"rpc": binding}, name="rw", extra=oslo_section("stream"))
    peer = ("--url", OSLO_URL, "--exchange", f"ex-{uid}", "--quorum", "--transient", "--stream")

    def handled() -> list[int]:
        return sorted(r["args"]["n"] for r in records(d, method="record"))

    for n in range(5):
        assert _oslo(*peer, "fanout", "--topic", topic, "record", f"n={n}").returncode == 0
    wait_for(lambda: handled() == list(range(5)), 30, message="the first casts")
    closed = rabbitmqctl("close_all_connections", "test: stream resume")
    assert closed.returncode == 0, closed.stderr
    # published while the worker reconnects: in the stream, read when it resumes
    for n in range(5, 10):
        assert _oslo(*peer, "fanout", "--topic", topic, "record", f"n={n}").returncode == 0
    d.wait_log("Connection to the broker lost")
    wait_for(lambda: handled() == list(range(10)), 60, message=f"every cast once: {handled()}")
    # a restarted process starts at the stream's end: nothing old is replayed
    sessions = d.log().count("Consuming:")
    d.stop()
    d.start()
    wait_for(lambda: d.log().count("Consuming:") > sessions, 30, message="the restarted worker")
    assert _oslo(*peer, "fanout", "--topic", topic, "record", "n=99").returncode == 0
    wait_for(lambda: 99 in handled(), 30, message="the cast after the restart")
    assert handled() == [*range(10), 99]


def test_a_deleted_stream_is_read_again_from_its_end(
    workers: Any, uid: str, cleanup_topic: str
) -> None:
    """The broker cancels the consumer of a deleted stream: the worker declares it again
    and reads the new one from its next message (as oslo resets to its end)."""
    topic = cleanup_topic
    binding = {"type": "rpc", "handler": "recorder", "topic": topic, "exchange": f"ex-{uid}"}
    d = workers.start({"rpc": binding}, name="rw", extra=oslo_section("stream"))
    peer = ("--url", OSLO_URL, "--exchange", f"ex-{uid}", "--quorum", "--transient", "--stream")

    def handled() -> list[int]:
        return sorted(r["args"]["n"] for r in records(d, method="record"))

    for n in range(3):
        assert _oslo(*peer, "fanout", "--topic", topic, "record", f"n={n}").returncode == 0
    wait_for(lambda: handled() == [0, 1, 2], 30, message="the casts before the deletion")
    delete_queues(f"{topic}_fanout")
    d.wait_log("streams start at their end")
    wait_for(lambda: d.log().count("Consuming:") >= 2, 30, message="consuming the new stream")
    for n in range(3, 6):
        assert _oslo(*peer, "fanout", "--topic", topic, "record", f"n={n}").returncode == 0
    wait_for(lambda: handled() == list(range(6)), 30, message=f"each cast once: {handled()}")
    assert queues_of(topic)[f"{topic}_fanout"] == "stream"


def test_queue_manager_names_are_unique_per_process_and_kept_across_restarts(
    workers: Any, uid: str, cleanup_topic: str
) -> None:
    """use_queue_manager with two worker processes: TOPIC_fanout_HOST:PROC:1 and :2 (oslo
    bug 2110957 gave two processes one name), the same after a restart, not deleted."""
    topic = cleanup_topic
    binding = {"type": "rpc", "handler": "recorder", "topic": topic, "exchange": f"ex-{uid}"}
    extra = (
        oslo_section("quorum") + f"use_queue_manager = true\nhostname = h-{uid}\n"
        "processname = rpcw\n"
    )
    d = workers.start({"rpc": binding}, default={"workers": 2}, extra=extra)
    names = [f"{topic}_fanout_h-{uid}:rpcw:{n}" for n in (1, 2)]

    def fanout_queues() -> list[str]:
        return sorted(n for n in queues_of(topic) if n.startswith(f"{topic}_fanout_"))

    wait_for(lambda: fanout_queues() == names, 30, message=f"two named queues: {fanout_queues()}")
    d.stop()
    assert fanout_queues() == names  # kept: the next start takes them back
    d.start()
    wait_for(lambda: d.log().count("Consuming:") >= 4, 30, message="both processes again")
    assert fanout_queues() == names
