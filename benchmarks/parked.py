"""How fast ``rpcworker-client parked`` reads and replays a parking lot.

    python -m benchmarks.parked [--n 5000] [--queue-type classic,quorum]

Fills a parking lot with N messages as the daemon parks them (the body of an oslo cast
and rpcworker's headers, persistent, confirmed), then times ``parked list``, ``parked
export`` and ``parked replay --to-queue`` (each as a real subprocess on a config file
naming the lot), checks that the lot was left whole by the first two and emptied into
the target by the last, and prints messages per second. No daemon runs: the figures are
the client's and the broker's alone.

The peer: no Python worker framework ships a replay tool, so the replay is measured
beside the pika script an operator would write instead (``basic_get``, a confirmed
``mandatory`` publish, ``basic_ack``, one message after the other), on a lot of its own
filled the same way, in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence

import amqp

from rpcworker.wire import envelope, xheaders

CLIENT = [sys.executable, "-m", "rpcworker.cmd.client"]

CONFIG = """[DEFAULT]
bindings = c
[broker]
hostname = {host}
port = {port}
[binding:c]
type = direct
handler = echo
exchange = bench-parked-{uid}
queue = bench-parked-q-{uid}
routing_key = k
queue_type = {qtype}
dead_letter_queue = {lot}
"""


def _channel(host: str, port: int) -> tuple[amqp.Connection, amqp.Channel]:
    conn = amqp.Connection(f"{host}:{port}", userid="guest", password="guest", confirm_publish=True)
    conn.connect()
    return conn, conn.channel()


def _depth(ch: amqp.Channel, queue: str) -> int:
    return int(ch.queue_declare(queue=queue, passive=True).message_count)


def fill(ch: amqp.Channel, lot: str, qtype: str, n: int) -> None:
    args = {"x-queue-type": "quorum"} if qtype == "quorum" else {}
    ch.queue_declare(queue=lot, durable=True, auto_delete=False, arguments=args)
    for i in range(n):
        body = envelope.envelope(envelope.oslo_request("resize", {"i": i}, {"user": "u"}))
        headers = {
            xheaders.FAILURE_HEADER: "ValueError: no room",
            xheaders.BINDING_HEADER: "c",
            xheaders.RETRIES_HEADER: 3,
            xheaders.ORIGINAL_EXCHANGE_HEADER: "nova",
            xheaders.ORIGINAL_KEY_HEADER: "compute",
            xheaders.PARKED_AT_HEADER: xheaders.utc_iso(),
        }
        ch.basic_publish(
            amqp.Message(
                body,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=f"m{i}",
                application_headers=headers,
            ),
            exchange="",
            routing_key=lot,
        )


def timed(conf: str, *args: str) -> float:
    started = time.perf_counter()
    p = subprocess.run(
        [*CLIENT, "--config-file", conf, "parked", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if p.returncode != 0:
        raise SystemExit(f"parked {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return elapsed


def pika_replay(host: str, port: int, lot: str, target: str) -> int:
    """The hand-written replay: get, publish with a confirm, ack; one by one."""
    import pika

    conn = pika.BlockingConnection(
        pika.ConnectionParameters(
            host=host, port=port, credentials=pika.PlainCredentials("guest", "guest")
        )
    )
    ch = conn.channel()
    ch.confirm_delivery()
    moved = 0
    while True:
        method, props, body = ch.basic_get(lot, auto_ack=False)
        if method is None:
            break
        ch.basic_publish("", target, body, props, mandatory=True)
        ch.basic_ack(method.delivery_tag)
        moved += 1
    conn.close()
    return moved


def run_one(host: str, port: int, qtype: str, n: int) -> dict[str, float]:
    uid = uuid.uuid4().hex[:8]
    lot, target = f"bench-parked-lot-{uid}", f"bench-parked-target-{uid}"
    conn, ch = _channel(host, port)
    try:
        fill(ch, lot, qtype, n)
        ch.queue_declare(queue=target, durable=True, auto_delete=False)
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write(CONFIG.format(host=host, port=port, uid=uid, qtype=qtype, lot=lot))
        out = f"{f.name}.jsonl"
        result = {"list": n / timed(f.name, "list")}
        assert _depth(ch, lot) == n, "list did not leave the lot whole"
        result["export"] = n / timed(f.name, "export", "--output", out)
        assert _depth(ch, lot) == n, "export did not leave the lot whole"
        result["replay"] = n / timed(f.name, "replay", "--to-queue", target)
        assert _depth(ch, lot) == 0 and _depth(ch, target) == n, "replay lost or kept some"
        fill(ch, lot, qtype, n)
        started = time.perf_counter()
        assert pika_replay(host, port, lot, target) == n
        result["pika script"] = n / (time.perf_counter() - started)
        os.unlink(f.name)
        os.unlink(out)
        return result
    finally:
        for q in (lot, target):
            ch.queue_delete(q)
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--queue-type", default="classic,quorum")
    p.add_argument("--host", default=os.environ.get("RPCWORKER_TEST_BROKER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=5672)
    ns = p.parse_args(argv)
    print(f"parked lot of {ns.n} messages; messages per second")
    print(f"{'lot':8} {'list':>8} {'export':>8} {'replay':>8} {'pika script':>12} {'ratio':>6}")
    for qtype in ns.queue_type.split(","):
        r = run_one(ns.host, ns.port, qtype, ns.n)
        print(
            f"{qtype:8} {r['list']:8.0f} {r['export']:8.0f} {r['replay']:8.0f} "
            f"{r['pika script']:12.0f} {r['replay'] / r['pika script']:5.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
