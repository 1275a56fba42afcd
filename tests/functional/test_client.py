"""rpcworker-client as a subprocess against the real daemon and the real RabbitMQ.

Run under the shared broker lock:
``flock /tmp/rpcworker-broker.lock .venv/bin/pytest -q tests/functional/test_client.py``
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from rpcworker_testplugin import read_records

from tests.functional.conftest import broker_section, delete_exchanges, delete_queues
from tests.functional.support import CLIENT, run_client
from tests.helpers import wait_for


def worker_config(uid: str, records: Path) -> str:
    return f"""\
[DEFAULT]
bindings = echo, rec, events
host = s-{uid}
graceful_shutdown_timeout = 10

{broker_section()}
[binding:echo]
type = rpc
handler = echo
topic = t-{uid}

[binding:rec]
type = rpc
handler = recorder
topic = r-{uid}

[binding:events]
type = topic
handler = recorder
exchange = ev-{uid}
queue = q-{uid}
routing_key = a.*

[recorder]
path = {records}
"""


@pytest.fixture
def worker(daemon_factory: Any, uid: str, tmp_path: Path) -> Iterator[Any]:
    d = daemon_factory(worker_config(uid, tmp_path / "records.jsonl"))
    d.wait_consuming(f"t-{uid}", f"t-{uid}.s-{uid}", f"r-{uid}", f"q-{uid}")
    d.wait_log("Consuming:")  # logged once every consumer, fanout queues too, is consuming
    d.uid, d.records = uid, str(tmp_path / "records.jsonl")
    yield d
    delete_queues(f"t-{uid}", f"t-{uid}.s-{uid}", f"r-{uid}", f"r-{uid}.s-{uid}", f"q-{uid}")
    delete_exchanges(f"ev-{uid}")


def records_of(worker: Any, kind: str, count: int = 1) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        got = [r for r in read_records(worker.records) if r["kind"] == kind]
        return got if len(got) >= count else []

    return wait_for(found, 15, message=f"{count} {kind} record(s) (log: {worker.log_tail()})")


# -- call ---------------------------------------------------------------------------


def test_call_prints_json_result(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "call",
        f"t-{worker.uid}",
        "echo",
        "--arg",
        "x=1",
        "--arg",
        "s=abc",
        "--args",
        '{"y": [1, 2], "x": 0}',
    )
    assert (p.returncode, p.stderr) == (0, "")
    assert json.loads(p.stdout) == {"y": [1, 2], "x": 1, "s": "abc"}


def test_call_to_server_with_context(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "call",
        f"t-{worker.uid}",
        "context",
        "--server",
        f"s-{worker.uid}",
        "--context",
        "user_id=u1",
        "--context",
        "request_id=req-1",
    )
    assert p.returncode == 0, p.stderr
    ctxt = json.loads(p.stdout)
    assert (ctxt["user_id"], ctxt["request_id"]) == ("u1", "req-1")


def test_call_ignores_call_monitor_heartbeats(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "call",
        f"t-{worker.uid}",
        "sleep",
        "--arg",
        "seconds=2",
        "--arg",
        "tag=hb",
        "--call-monitor-timeout",
        "1",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"slept": 2.0, "tag": "hb"}


def test_remote_failure_exits_1(worker: Any) -> None:
    p = run_client(worker.config_path, "call", f"t-{worker.uid}", "fail", "--arg", "message=boom")
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr.strip() == "ValueError: boom"


def test_unknown_method_is_a_remote_error(worker: Any) -> None:
    p = run_client(worker.config_path, "call", f"t-{worker.uid}", "no_such_method")
    assert p.returncode == 1
    assert "NoSuchMethod: Endpoint does not support RPC method no_such_method" in p.stderr


def test_call_nobody_serves_times_out_with_3(worker: Any) -> None:
    start = time.monotonic()
    p = run_client(worker.config_path, "call", f"nobody-{worker.uid}", "echo", "--timeout", "2")
    elapsed = time.monotonic() - start
    assert (p.returncode, p.stdout) == (3, "")
    assert "timed out after 2s" in p.stderr and f"nobody-{worker.uid}" in p.stderr
    assert 2 <= elapsed < 10


# -- cast, fanout, publish ----------------------------------------------------------


def test_cast_is_handled(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "cast",
        f"r-{worker.uid}",
        "record",
        "--arg",
        "n=1",
        "--context",
        "user_id=u2",
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    [rec] = records_of(worker, "rpc")
    assert (rec["method"], rec["args"], rec["ctxt"]["user_id"]) == ("record", {"n": 1}, "u2")


def test_fanout_is_handled(worker: Any) -> None:
    p = run_client(worker.config_path, "fanout", f"r-{worker.uid}", "record", "--arg", "n=2")
    assert (p.returncode, p.stderr) == (0, "")
    [rec] = records_of(worker, "rpc")
    assert rec["args"] == {"n": 2}


def test_publish_reaches_handle_message(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "publish",
        "--exchange",
        f"ev-{worker.uid}",
        "--type",
        "topic",
        "--routing-key",
        "a.b",
        '{"event": "created", "n": 3}',
    )
    assert (p.returncode, p.stderr) == (0, "")
    [rec] = records_of(worker, "event")
    assert rec["body"] == {"event": "created", "n": 3}
    assert (rec["exchange"], rec["routing_key"]) == (f"ev-{worker.uid}", "a.b")


def test_publish_declares_a_missing_exchange(worker: Any) -> None:
    name = f"new-{worker.uid}"
    try:
        p = run_client(worker.config_path, "publish", "--exchange", name, "--type", "fanout", "{}")
        assert p.returncode == 0, p.stderr
        assert f"exchange '{name}' did not exist: declared it (type fanout, durable)" in p.stderr
        assert "no queue is bound" in p.stderr
        p = run_client(worker.config_path, "publish", "--exchange", name, "{}")
        assert p.returncode == 0 and "declared" not in p.stderr
    finally:
        delete_exchanges(name)


def test_bad_json_exits_2(worker: Any) -> None:
    p = run_client(worker.config_path, "call", f"t-{worker.uid}", "echo", "--args", "{x")
    assert (p.returncode, p.stdout) == (2, "")
    assert "--args: not valid JSON" in p.stderr
    p = run_client(
        worker.config_path,
        "publish",
        "--exchange",
        f"ev-{worker.uid}",
        "--routing-key",
        "a.b",
        "not json",
    )
    assert p.returncode == 2 and "BODY_JSON: not valid JSON" in p.stderr


# -- --args -, --json, --count ---------------------------------------------------------


def test_call_args_from_stdin(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "call",
        f"t-{worker.uid}",
        "echo",
        "--args",
        "-",
        "--arg",
        "x=2",
        stdin='{"x": 1, "nested": {"l": [1, "two", null]}}',
    )
    assert (p.returncode, p.stderr) == (0, "")
    assert json.loads(p.stdout) == {"x": 2, "nested": {"l": [1, "two", None]}}
    p = run_client(
        worker.config_path, "call", f"t-{worker.uid}", "echo", "--args", "-", stdin="[1]"
    )
    assert (p.returncode, p.stdout) == (2, "")
    assert "--args: stdin: must be a JSON object, not list" in p.stderr


def only_json_error(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    [line] = p.stderr.strip().splitlines()
    data = json.loads(line)
    assert data["exit"] == p.returncode
    return data["error"]  # type: ignore[no-any-return]


def test_json_remote_error(worker: Any) -> None:
    p = run_client(
        worker.config_path, "--json", "call", f"t-{worker.uid}", "fail", "--arg", "message=boom"
    )
    assert (p.returncode, p.stdout) == (1, "")
    assert only_json_error(p) == {"type": "ValueError", "module": "builtins", "message": "boom"}
    p = run_client(
        worker.config_path, "call", f"t-{worker.uid}", "no_such_method", "--json", "--traceback"
    )
    error = only_json_error(p)
    assert (error["type"], error["module"]) == ("NoSuchMethod", "oslo_messaging.rpc.dispatcher")
    assert "no_such_method" in error["message"]


def test_json_timeout(worker: Any) -> None:
    p = run_client(
        worker.config_path, "--json", "call", f"nobody-{worker.uid}", "echo", "--timeout", "1"
    )
    assert (p.returncode, p.stdout) == (3, "")
    error = only_json_error(p)
    assert (error["type"], error["module"]) == ("Timeout", "rpcworker.cmd.client")
    assert "timed out after 1s" in error["message"]


def summary_of(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    [line] = p.stdout.splitlines()
    return json.loads(line)  # type: ignore[no-any-return]


def test_count_calls_over_several_connections(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "call",
        f"t-{worker.uid}",
        "echo",
        "--arg",
        "x=1",
        "--count",
        "40",
        "--concurrency",
        "4",
    )
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    s = summary_of(p)
    assert (s["command"], s["count"], s["concurrency"]) == ("call", 40, 4)
    assert (s["sent"], s["ok"], s["errors"]) == (40, 40, 0)
    assert s["elapsed"] > 0 and s["rate"] > 0
    assert 0 < s["p50"] <= s["p95"] < s["elapsed"]


def test_count_casts_are_all_handled(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "cast",
        f"r-{worker.uid}",
        "record",
        "--args",
        "-",
        "--count",
        "12",
        "--concurrency",
        "3",
        stdin='{"n": 7}',
    )
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    s = summary_of(p)
    assert (s["sent"], s["ok"], s["errors"], s["concurrency"]) == (12, 12, 0, 3)
    assert "p50" not in s and "p95" not in s  # latencies are for calls
    recs = records_of(worker, "rpc", 12)
    assert len(recs) == 12 and all(r["args"] == {"n": 7} for r in recs)


def test_count_with_remote_errors_exits_1(worker: Any) -> None:
    p = run_client(
        worker.config_path,
        "--json",
        "call",
        f"t-{worker.uid}",
        "fail",
        "--arg",
        "message=boom",
        "--count",
        "5",
        "--concurrency",
        "2",
    )
    assert p.returncode == 1
    s = summary_of(p)
    assert (s["sent"], s["ok"], s["errors"]) == (5, 0, 5)
    assert (s["p50"], s["p95"]) == (None, None)
    data = json.loads(p.stderr)
    assert data == {
        "error": {"type": "ValueError", "module": "builtins", "message": "boom"},
        "exit": 1,
        "errors": 5,
    }
    p = run_client(
        worker.config_path,
        "call",
        f"t-{worker.uid}",
        "fail",
        "--arg",
        "message=boom",
        "--count",
        "2",
    )
    assert p.returncode == 1
    assert p.stderr.strip() == (
        "rpcworker-client: 2 of 2 requests failed; the first: ValueError: boom"
    )


# -- the wire, without a daemon -------------------------------------------------------


def test_request_properties_are_oslo_s(
    connection: kombu.Connection, uid: str, tmp_path: Path
) -> None:
    conf = tmp_path / "client.conf"
    conf.write_text(broker_section())
    topic = f"probe-{uid}"
    queue = kombu.Queue(
        topic,
        kombu.Exchange("openstack", type="topic", durable=False),
        routing_key=topic,
        durable=False,
        auto_delete=False,
    )
    queue(connection.default_channel).declare()

    def get() -> Any:
        return queue(connection.default_channel).get(no_ack=True)

    try:
        # the call's expiration is its timeout: take the request while the client waits
        waiting = subprocess.Popen(
            [
                *CLIENT,
                "--config-file",
                str(conf),
                "call",
                topic,
                "echo",
                "--arg",
                "x=1",
                "--timeout",
                "5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        call = wait_for(get, 5, 0.02, message="the call request")
        assert waiting.wait(timeout=15) == 3
        assert run_client(conf, "cast", topic, "echo", "--version", "1.1").returncode == 0
        cast = wait_for(get, 5, message="the cast request")
    finally:
        delete_queues(topic)
    for m in (call, cast):
        assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
        assert m.properties["delivery_mode"] == 2
        assert (m.delivery_info["exchange"], m.delivery_info["routing_key"]) == ("openstack", topic)
    assert call.properties["expiration"] == "5000"
    assert "expiration" not in cast.properties
    inner = json.loads(json.loads(call.body)["oslo.message"])
    assert list(inner) == ["method", "args", "_msg_id", "_reply_q", "_timeout", "_unique_id"]
    assert inner["_reply_q"].startswith("reply_") and inner["_timeout"] is None
    inner = json.loads(json.loads(cast.body)["oslo.message"])
    assert list(inner) == ["method", "args", "version", "_unique_id"]
