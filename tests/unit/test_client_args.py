"""rpcworker-client without a broker: arguments, request bodies, replies, exit statuses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from rpcworker.client import args as cargs
from rpcworker.client import exits as cerrors
from rpcworker.client import load as cload
from rpcworker.client import request as crequest
from rpcworker.cmd import client
from rpcworker.wire import decoding, envelope, replyformat

# the inner dicts oslo.messaging 18.3.1 sends (../shared/reference/oslo-rabbit-wire.md §2)
OSLO_CALL_KEYS = [
    "method",
    "args",
    "version",
    "_msg_id",
    "_reply_q",
    "_timeout",
    "_unique_id",
    "_context_user_id",
    "_context_project_id",
    "_context_request_id",
]
OSLO_CAST_KEYS = [
    "method",
    "args",
    "_unique_id",
    "_context_user_id",
    "_context_project_id",
    "_context_request_id",
]
CTX = ["--context", "user_id=u1", "--context", "project_id=p1", "--context", "request_id=req-abc"]


def request(*argv: str) -> crequest.RpcRequest:
    return crequest.rpc_request(cargs.parse_args(argv))


# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("1.5", 1.5),
        ("abc", "abc"),
        ('"1"', "1"),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("", ""),
        ("a=b", "a=b"),
        ("NaN", "NaN"),
    ],
)
def test_json_value(text: str, value: Any) -> None:
    assert cargs.json_value(text) == value


def test_call_defaults() -> None:
    ns = cargs.parse_args(["call", "compute", "echo"])
    assert (ns.command, ns.topic, ns.method) == ("call", "compute", "echo")
    assert ns.timeout == cargs.DEFAULT_TIMEOUT == 30
    assert ns.call_monitor_timeout is None
    req = crequest.rpc_request(ns)
    assert req == crequest.RpcRequest(topic="compute", method="echo", args={})
    assert (req.exchange, req.routing_key) == ("openstack", "compute")


def test_call_options() -> None:
    req = request(
        "call",
        "compute",
        "echo",
        "--server",
        "host1",
        "--exchange",
        "nova",
        "--version",
        "1.2",
        "--namespace",
        "baseapi",
        *CTX,
    )
    assert (req.exchange, req.routing_key) == ("nova", "compute.host1")
    assert (req.version, req.namespace) == ("1.2", "baseapi")
    assert req.context == {"user_id": "u1", "project_id": "p1", "request_id": "req-abc"}


def test_arg_values_are_json_when_they_parse() -> None:
    req = request(
        "call",
        "t",
        "m",
        "--arg",
        "x=1",
        "--arg",
        "s=abc",
        "--arg",
        "l=[1,2]",
        "--arg",
        "e=",
        "--arg",
        "eq=a=b",
    )
    assert req.args == {"x": 1, "s": "abc", "l": [1, 2], "e": "", "eq": "a=b"}


def test_arg_merges_over_args_json() -> None:
    req = request(
        "call", "t", "m", "--args", '{"x": 0, "y": {"z": 1}}', "--arg", "x=1", "--arg", "x=2"
    )
    assert req.args == {"x": 2, "y": {"z": 1}}
    assert cargs.merge_args(None, None) == {}


def test_config_args_anywhere_in_order() -> None:
    ns = cargs.parse_args(
        [
            "--config-file",
            "a.conf",
            "--config-dir",
            "d",
            "cast",
            "t",
            "m",
            "--config-file",
            "b.conf",
        ]
    )
    assert cargs.oslo_args(ns) == [
        "--config-file",
        "a.conf",
        "--config-file",
        "b.conf",
        "--config-dir",
        "d",
    ]
    assert cargs.oslo_args(cargs.parse_args(["fanout", "t", "m"])) == []


def test_publish_args() -> None:
    ns = cargs.parse_args(
        ["publish", "--exchange", "events", "--type", "topic", "--routing-key", "a.b", '{"x": 1}']
    )
    assert (ns.exchange, ns.type, ns.routing_key, ns.body) == ("events", "topic", "a.b", '{"x": 1}')
    ns = cargs.parse_args(["publish", "--exchange", "", "[1]"])
    assert (ns.type, ns.routing_key) == (None, "")


@pytest.mark.parametrize(
    "argv",
    [
        ["call", "t", "m", "--args", "{bad"],
        ["call", "t", "m", "--args", "[1, 2]"],
        ["call", "t", "m", "--arg", "novalue"],
        ["call", "t", "m", "--arg", "=1"],
        ["call", "t", "m", "--timeout", "0"],
        ["call", "t", "m", "--timeout", "soon"],
        ["cast", "t", "m", "--timeout", "5"],  # casts do not wait
        ["fanout", "t", "m", "--server", "s"],  # fanout reaches every server
        ["publish", "--exchange", "e", "not json"],
        ["publish", "--exchange", "e", "--type", "headers", "{}"],
        ["publish", "{}"],
        ["call", "t"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(argv) == cerrors.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and "usage:" in err


def test_bad_args_json_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["call", "t", "m", "--args", '{"x": 1']) == 2
    assert "argument --args: not valid JSON" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["call", "--help"]) == 0
    assert "--timeout" in capsys.readouterr().out


# -- request bodies -----------------------------------------------------------------


def test_call_inner_fields_are_oslo_s() -> None:
    req = request("call", "t", "echo", "--arg", "x=5", "--version", "1.2", *CTX)
    inner = crequest.inner_message(req, msg_id="m1", reply_q="reply_q1")
    assert list(inner) == OSLO_CALL_KEYS
    assert inner["method"] == "echo" and inner["args"] == {"x": 5}
    assert (inner["_msg_id"], inner["_reply_q"], inner["_timeout"]) == ("m1", "reply_q1", None)
    assert len(inner["_unique_id"]) == 32 and int(inner["_unique_id"], 16) >= 0
    assert inner["_context_request_id"] == "req-abc"


def test_cast_inner_fields_are_oslo_s() -> None:
    inner = crequest.inner_message(request("cast", "t", "echo", "--arg", "x=6", *CTX))
    assert list(inner) == OSLO_CAST_KEYS
    assert inner["args"] == {"x": 6}


def test_minimal_and_namespaced_bodies() -> None:
    assert list(crequest.inner_message(request("fanout", "t", "m"))) == [
        "method",
        "args",
        "_unique_id",
    ]
    inner = crequest.inner_message(
        request("call", "t", "m", "--namespace", "ns", "--version", "1.1"),
        msg_id="a",
        reply_q="b",
        monitor_timeout=4,
    )
    assert list(inner)[:4] == ["method", "args", "namespace", "version"]
    assert inner["_timeout"] == 4
    a, b = (crequest.inner_message(request("cast", "t", "m")) for _ in range(2))
    assert a["_unique_id"] != b["_unique_id"]


def test_envelope_is_decoded_by_the_worker_as_the_same_request() -> None:
    req = request("call", "t", "echo", "--arg", "x=1", "--version", "1.2", *CTX)
    inner = crequest.inner_message(req, msg_id="mid", reply_q="reply_x")
    body = envelope.envelope(inner)
    outer = json.loads(body)
    assert outer["oslo.version"] == "2.0" and json.loads(outer["oslo.message"]) == inner
    decoded = decoding.decode(body, "application/json", "utf-8")
    assert isinstance(decoded, decoding.Request)
    assert decoded.reply is not None and decoded.reply.style == "oslo"
    assert (decoded.method, dict(decoded.args), decoded.version) == ("echo", {"x": 1}, "1.2")
    assert decoded.reply == decoding.ReplyRoute("oslo", "reply_x", msg_id="mid")
    assert decoded.context["user_id"] == "u1"


# -- replies ------------------------------------------------------------------------


def reply(msg_id: str, **fields: Any) -> bytes:
    inner = {"result": None, "failure": None, "ending": True, "_msg_id": msg_id, "_unique_id": "u"}
    inner.update(fields)
    return envelope.envelope(inner)


def test_reply_result() -> None:
    route = decoding.ReplyRoute("oslo", "reply_q", msg_id="m1")
    w = replyformat.ReplyWaiter("m1")
    assert w.feed(replyformat.encode_result(route, {"got": 5}).body) is True
    assert (w.result, w.failure) == ({"got": 5}, None)


def test_reply_other_msg_id_heartbeats_and_garbage_are_ignored() -> None:
    w = replyformat.ReplyWaiter("m1")
    assert not w.feed(reply("other", result=1))
    assert not w.feed(reply("m1", ending=False))  # call-monitor heartbeat
    assert not w.feed(b"\xff not json")
    assert not w.feed(b"[1]")
    assert w.feed(reply("m1", result=[1, 2]))
    assert w.result == [1, 2]


def test_reply_pre_4_0_two_message_form_keeps_the_result() -> None:
    w = replyformat.ReplyWaiter("m1")
    first = envelope.envelope({"result": "r", "failure": None, "_msg_id": "m1"})
    assert not w.feed(first)
    assert w.feed(reply("m1"))
    assert w.result == "r"


def test_reply_failure() -> None:
    route = decoding.ReplyRoute("oslo", "reply_q", msg_id="m1")
    try:
        raise ValueError("bad", 42)
    except ValueError as exc:
        body = replyformat.encode_failure(route, exc).body
    w = replyformat.ReplyWaiter("m1")
    assert w.feed(body)
    assert w.failure is not None
    assert w.failure.line() == "ValueError: ('bad', 42)"
    assert any("Traceback" in line for line in w.failure.traceback)


def test_failure_lines() -> None:
    info = {
        "class": "NoSuchMethod",
        "module": "oslo_messaging.rpc.dispatcher",
        "message": "Endpoint does not support RPC method x",
    }
    assert replyformat.parse_failure(json.dumps(info)).line() == (
        "oslo_messaging.rpc.dispatcher.NoSuchMethod: Endpoint does not support RPC method x"
    )
    assert replyformat.parse_failure("not json").line() == "RemoteError: not json"
    assert (
        replyformat.parse_failure(
            {"class": "KeyError", "module": "builtins", "message": "'k'"}
        ).line()
        == "KeyError: 'k'"
    )


# -- configuration and broker errors (no broker needed) ------------------------------


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "client.conf"
    path.write_text(text)
    return str(path)


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.conf")
    assert client.main(["--config-file", missing, "call", "t", "m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpcworker-client: configuration error:") and missing in err
    assert len(err.strip().splitlines()) == 1


def test_bad_config_value_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, "[DEFAULT]\ntransport_url = http://h/\n")
    assert client.main(["call", "t", "m", "--config-file", conf]) == 2
    err = capsys.readouterr().err
    assert "[DEFAULT] transport_url" in err and len(err.strip().splitlines()) == 1


def test_unreachable_broker_exits_4_without_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(
        tmp_path,
        "[broker]\nhostname = 127.0.0.1\nport = 1\npassword = Sup3rS3cret\nconnect_timeout = 1\n",
    )
    assert client.main(["--config-file", conf, "cast", "t", "m"]) == cerrors.EXIT_BROKER
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("rpcworker-client: cannot connect to the broker at amqp://guest:***@")
    assert "Sup3rS3cret" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# -- --args -, --json, --count ---------------------------------------------------------


def test_args_dash_reads_the_json_object_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"x": 0, "big": [1, 2, 3]}\n'))
    req = request("call", "t", "m", "--args", "-", "--arg", "x=1")
    assert req.args == {"x": 1, "big": [1, 2, 3]}


@pytest.mark.parametrize(
    ("stdin", "error"),
    [
        ("{x", "argument --args: stdin: not valid JSON"),
        ("[1]", "argument --args: stdin: must be a JSON object, not list"),
        ("", "argument --args: stdin: not valid JSON"),
    ],
)
def test_args_dash_bad_stdin_exits_2(
    stdin: str, error: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert client.main(["cast", "t", "m", "--args", "-"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage:" in err and error in err


def json_error(err: str) -> dict[str, Any]:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    data = json.loads(lines[0])
    assert set(data) >= {"error", "exit"} and set(data["error"]) >= {"type", "module", "message"}
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "call", "t", "m", "--args", "{bad"],
        ["call", "t", "m", "--json", "--timeout", "0"],
        ["--json", "cast", "t", "m", "--concurrency", "2"],  # --concurrency needs --count
        ["--json"],
    ],
)
def test_json_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(argv) == cerrors.EXIT_USAGE
    out, err = capsys.readouterr()
    data = json_error(err)
    assert out == "" and "usage:" not in err
    assert data["exit"] == 2 and data["error"]["type"] == "UsageError"
    assert data["error"]["module"] == cerrors.CLIENT_MODULE
    assert data["error"]["message"].startswith("rpcworker-client")


def test_json_after_double_dash_is_not_the_option() -> None:
    assert cargs.json_errors(None, ["cast", "--", "--json"]) is False
    assert cargs.json_errors(None, ["--json", "cast"]) is True


def test_json_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.conf")
    assert client.main(["--json", "--config-file", missing, "call", "t", "m"]) == 2
    data = json_error(capsys.readouterr().err)
    assert data["exit"] == 2 and data["error"]["type"] == "ConfigError"
    assert missing in data["error"]["message"]


def test_json_broker_error_has_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(
        tmp_path,
        "[broker]\nhostname = 127.0.0.1\nport = 1\npassword = Sup3rS3cret\nconnect_timeout = 1\n",
    )
    assert client.main(["--config-file", conf, "cast", "t", "m", "--json"]) == 4
    out, err = capsys.readouterr()
    data = json_error(err)
    assert out == "" and "Sup3rS3cret" not in err
    assert (data["exit"], data["error"]["type"]) == (4, "BrokerError")
    assert data["error"]["message"].startswith("cannot connect to the broker at")


def test_count_on_an_unreachable_broker_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, "[broker]\nhostname = 127.0.0.1\nport = 1\nconnect_timeout = 1\n")
    assert (
        client.main(["--config-file", conf, "call", "t", "m", "--count", "5", "--concurrency", "2"])
        == 4
    )
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("rpcworker-client: cannot connect to the broker")


def test_remote_failure_as_json() -> None:
    failure = replyformat.RemoteError(
        "NoSuchMethod",
        "oslo_messaging.rpc.dispatcher",
        "Endpoint does not support RPC method x",
        ("Traceback (most recent call last):\n", "  ...\n"),
    )
    assert cerrors.RemoteCallError(failure).as_json() == {
        "error": {
            "type": "NoSuchMethod",
            "module": "oslo_messaging.rpc.dispatcher",
            "message": "Endpoint does not support RPC method x",
        },
        "exit": 1,
    }
    with_tb = cerrors.RemoteCallError(failure, traceback=True).as_json()
    assert with_tb["error"]["traceback"] == "Traceback (most recent call last):\n  ..."
    load = cload.LoadError(cerrors.RemoteCallError(failure), 3, 10)
    assert load.status == 1 and str(load).startswith("3 of 10 requests failed; the first: ")
    assert load.as_json()["errors"] == 3 and load.as_json()["error"]["type"] == "NoSuchMethod"


def test_count_and_concurrency_options() -> None:
    ns = cargs.parse_args(["call", "t", "m"])
    assert (ns.count, ns.concurrency) == (None, None)
    ns = cargs.parse_args(["cast", "t", "m", "--count", "100", "--concurrency", "4"])
    assert (ns.count, ns.concurrency) == (100, 4)
    assert cargs.parse_args(["fanout", "t", "m", "--count", "1"]).count == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["call", "t", "m", "--count", "0"],
        ["call", "t", "m", "--count", "x"],
        ["call", "t", "m", "--count", "2", "--concurrency", "0"],
        ["cast", "t", "m", "--concurrency", "2"],
        ["publish", "--exchange", "e", "--count", "2", "{}"],
    ],
)
def test_count_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert cload._percentile(values, 0.5) == 50.0
    assert cload._percentile(values, 0.95) == 95.0
    assert cload._percentile([7.0], 0.95) == 7.0
    assert cload._percentile([], 0.5) is None


def test_help_documents_exit_statuses_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["call", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "0 ok, 1 remote error, 2 usage or configuration error, 3 timeout, 4 broker",
        "--json",
        "--count N",
        "--concurrency C",
        "or - to read it from stdin",
    ):
        assert text in out
