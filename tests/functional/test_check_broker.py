"""`rpcworker --check-config --broker` against the real RabbitMQ: what would be created,
what is consistent, what conflicts (and how to migrate), an unreachable broker. The check
itself must never create, change or delete anything on the broker.
"""

from __future__ import annotations

import socket
import textwrap
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kombu
import pytest

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    BROKER_URL,
    delete_exchanges,
    delete_queues,
)
from tests.functional.support import queue_info, run


def config(uid: str, port: int = BROKER_PORT, quorum: bool = False, extra: str = "") -> str:
    """A direct binding (queue bq-UID on exchange bx-UID, no retries; ``extra`` options)
    and a default fanout binding (a per-process queue: skipped)."""
    args = ("queue_arguments = x-queue-type:quorum\n" if quorum else "") + extra
    return (
        textwrap.dedent(f"""\
        [DEFAULT]
        bindings = work, fan
        host = h-{uid}

        [broker]
        hostname = {BROKER_HOST}
        port = {port}
        connect_timeout = 2

        [binding:work]
        type = direct
        handler = recorder
        exchange = bx-{uid}
        queue = bq-{uid}
        routing_key = k-{uid}
        max_retries = 0
        """)
        + args
        + textwrap.dedent(f"""
        [binding:fan]
        type = fanout
        handler = recorder
        exchange = bf-{uid}

        [recorder]
        path = /dev/null
        """)
    )


@pytest.fixture
def names(uid: str) -> Iterator[dict[str, str]]:
    n = {"queue": f"bq-{uid}", "exchange": f"bx-{uid}", "fanout": f"bf-{uid}"}
    yield n
    delete_queues(n["queue"])
    delete_exchanges(n["exchange"], n["fanout"])


def exchange_exists(name: str) -> bool:
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        try:
            conn.channel().exchange_declare(name, "direct", passive=True)
            return True
        except conn.channel_errors:
            return False


def check(tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "check.conf"
    path.write_text(text)
    result = run("--config-file", str(path), "--check-config", "--broker")
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


def test_nothing_declared_lists_what_would_be_created(
    tmp_path: Path, uid: str, names: dict[str, str]
) -> None:
    rc, out, err = check(tmp_path, config(uid))
    assert rc == 0, out + err
    assert f"create    queue {names['queue']!r} (binding work)" in out
    assert f"create    exchange {names['exchange']!r} (binding work)" in out
    assert f"create    exchange {names['fanout']!r} (binding fan)" in out
    assert "skipped   queue" in out and "per-process" in out
    assert "broker: consistent (3 to create at start-up)" in out
    # the check created nothing
    assert queue_info(names["queue"]) is None
    assert not exchange_exists(names["exchange"])
    assert not exchange_exists(names["fanout"])


def test_after_the_worker_declared_it_is_consistent(
    tmp_path: Path, uid: str, names: dict[str, str], daemon_factory: Any
) -> None:
    # the worker runs once and declares everything
    d = daemon_factory(config(uid), "once")
    d.wait_consuming(names["queue"])
    assert d.stop(timeout=30) == 0
    rc, out, err = check(tmp_path, config(uid))
    assert rc == 0, out + err
    assert f"ok        queue {names['queue']!r}" in out
    assert f"ok        exchange {names['exchange']!r}" in out
    assert f"ok        exchange {names['fanout']!r}" in out
    assert "broker: consistent (0 to create at start-up)" in out
    assert "CONFLICT" not in out


def test_conflicts_name_binding_argument_and_migration(
    tmp_path: Path, uid: str, names: dict[str, str]
) -> None:
    # a classic durable queue holding a message, and the exchange as type topic
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        ch = conn.channel()
        ch.exchange_declare(names["exchange"], "topic", durable=True)
        ch.queue_declare(names["queue"], durable=True, auto_delete=False)
        ch.basic_publish(ch.prepare_message(b"keep me"), exchange="", routing_key=names["queue"])
    before = queue_info(names["queue"])
    assert before is not None
    rc, out, err = check(tmp_path, config(uid, quorum=True))
    assert rc == 1, out + err
    queue_line = f"CONFLICT  queue {names['queue']!r} (binding work)"
    exchange_line = f"CONFLICT  exchange {names['exchange']!r} (binding work)"
    assert queue_line in out and exchange_line in out, out
    assert "406 PRECONDITION_FAILED" in out
    assert "differs: x-queue-type: configured quorum" in out
    assert "differs: type: configured direct, broker has topic" in out
    assert "a queue's type cannot change in place" in out
    assert "new queue name" in out and f"rabbitmqctl delete_queue {names['queue']}" in out
    assert "new exchange name" in out
    assert "conflict(s)" in out
    # nothing was changed: the queue is still classic, durable, with its message
    after = queue_info(names["queue"])
    assert after is not None
    assert after["arguments"] == before["arguments"]
    assert "quorum" not in str(after["arguments"])
    assert after["durable"] is True and after["messages_ready"] == 1
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        conn.channel().exchange_declare(names["exchange"], "topic", durable=True)  # no 406
        with pytest.raises(conn.channel_errors):
            conn.channel().exchange_declare(names["exchange"], "direct", durable=True)
    assert not exchange_exists(names["fanout"])


def test_durable_flag_conflict(tmp_path: Path, uid: str, names: dict[str, str]) -> None:
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        conn.channel().queue_declare(names["queue"], durable=False, auto_delete=False)
    rc, out, err = check(tmp_path, config(uid))
    assert rc == 1, out + err
    assert "differs: durable: configured true, broker has false" in out
    assert "durable cannot change in place" in out
    assert "or keep what the broker has: configure durable = false" in out
    info = queue_info(names["queue"])
    assert info is not None and info["durable"] is False


def test_broker_unreachable_one_line(tmp_path: Path, uid: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = check(tmp_path, config(uid, port=port))
    assert rc == 4, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rpcworker: broker unreachable: ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert "guest:guest" not in lines[0]


def test_management_api_names_every_difference(
    tmp_path: Path, uid: str, names: dict[str, str]
) -> None:
    """Real broker, and a management API stub answering with what is on it: the plan
    lists all differences (the 406 names only the first) and the message count."""
    from rpcworker.amqp import broker, brokercheck
    from rpcworker.config import bindingconf
    from rpcworker.config import conffile as rpcconfig
    from tests.fakes import CLASSIC_QUEUE, RECORDED, ManagementStub

    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        conn.channel().queue_declare(
            names["queue"], durable=True, auto_delete=False, arguments={"x-max-length": 50}
        )
    recorded = {
        f"/api/queues/%2F/{names['queue']}": dict(
            CLASSIC_QUEUE, name=names["queue"], arguments={"x-max-length": 50}, messages=3
        )
    }
    RECORDED.update(recorded)
    server = ThreadingHTTPServer(("127.0.0.1", 0), ManagementStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = tmp_path / "check.conf"
        path.write_text(config(uid, quorum=True))
        conf = rpcconfig.prepare(["--config-file", str(path)], default_config_files=[])
        parsed = bindingconf.parse(conf)
        settings = broker.settings(conf)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = brokercheck.check(
            parsed, settings, broker.connection(conf, settings), management_url=url
        )
    finally:
        server.shutdown()
        server.server_close()
        for key in recorded:
            RECORDED.pop(key)
    text = "\n".join(result.lines())
    assert "actual flags and arguments shown" in text
    (conflict,) = result.conflicts
    assert conflict.entity.name == names["queue"]
    assert {str(d) for d in conflict.differences} == {
        "x-queue-type: configured quorum, broker has classic",
        "x-max-length: configured (unset), broker has 50",
    }
    assert "the queue holds 3 message(s)" in text
    info = queue_info(names["queue"])
    assert info is not None and "x-max-length" in str(info["arguments"])
    assert "quorum" not in str(info["arguments"])


def test_quorum_binding_matches_a_quorum_queue_and_conflicts_with_a_classic_one(
    tmp_path: Path, uid: str, names: dict[str, str], daemon_factory: Any
) -> None:
    parking = f"bd-{uid}"
    text = config(
        uid, extra=f"queue_type = quorum\ndelivery_limit = 2\ndead_letter_queue = {parking}\n"
    )
    try:
        d = daemon_factory(text, "once")
        d.wait_consuming(names["queue"])
        assert d.stop(timeout=30) == 0
        rc, out, err = check(tmp_path, text)
        assert rc == 0, out + err
        assert f"ok        queue {names['queue']!r}" in out
        assert f"ok        queue {parking!r}" in out
        assert "broker: consistent (0 to create at start-up)" in out
        delete_queues(names["queue"])  # the same queue, now classic
        with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
            conn.channel().queue_declare(names["queue"], durable=True, auto_delete=False)
        rc, out, err = check(tmp_path, text)
        assert rc == 1, out + err
        assert f"CONFLICT  queue {names['queue']!r} (binding work)" in out
        assert "x-queue-type: configured quorum" in out
        assert "type cannot change in place (classic -> quorum)" in out
        assert "configure queue_type = classic" in out
    finally:
        delete_queues(parking)
