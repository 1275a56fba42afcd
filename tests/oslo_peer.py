"""A real oslo.messaging RPC server or client in a process of its own, configured with
``[oslo_messaging_rabbit]`` options, for the interop tests on RabbitMQ 3.10 and 4.x.

oslo.messaging 18 needs its GLOBAL ``cfg.CONF`` (a private ConfigOpts fails in ``call()``),
and the options are global to the process: a subprocess keeps the tests' own process on
oslo's defaults.

    python -m tests.oslo_peer --url URL --exchange E [--quorum] [--transient] [--stream] \
        server --topic T --server S --record FILE      # prints READY, serves until SIGTERM
    python -m tests.oslo_peer --url URL --exchange E ... \
        call --topic T [--server S] METHOD [k=v ...]   # prints the result as JSON
    python -m tests.oslo_peer --url URL --exchange E ... \
        fanout --topic T METHOD [k=v ...]              # a fanout cast

The server's endpoint ``record(ctxt, **kwargs)`` appends ``{"server": S, "args": kwargs}``
to FILE and returns ``{"server": S, **kwargs}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any


def _kwargs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = json.loads(value) if value[:1] in '0123456789[{"-tfn' else value
    return out


class Endpoint:
    def __init__(self, server: str, path: str) -> None:
        self.server = server
        self.path = path
        self.lock = threading.Lock()

    def record(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps({"server": self.server, "args": kwargs}) + "\n")
        return {"server": self.server, **kwargs}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="oslo_peer")
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--quorum", action="store_true", help="rabbit_quorum_queue")
    p.add_argument("--transient", action="store_true", help="rabbit_transient_quorum_queue")
    p.add_argument("--stream", action="store_true", help="rabbit_stream_fanout")
    p.add_argument("--prefetch", type=int, default=10, help="rabbit_qos_prefetch_count")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server")
    s.add_argument("--topic", required=True)
    s.add_argument("--server", required=True)
    s.add_argument("--record", required=True)
    for name in ("call", "fanout"):
        c = sub.add_parser(name)
        c.add_argument("--topic", required=True)
        c.add_argument("--server")
        c.add_argument("method")
        c.add_argument("args", nargs="*")
    ns = p.parse_args(argv)

    import oslo_messaging as om
    from oslo_config import cfg

    om.set_transport_defaults(control_exchange=ns.exchange)
    cfg.CONF([], project="rpcworker-interop")
    transport = om.get_rpc_transport(cfg.CONF, url=ns.url)
    group = "oslo_messaging_rabbit"
    for option, value in (
        ("rabbit_quorum_queue", ns.quorum),
        ("rabbit_transient_quorum_queue", ns.transient),
        ("rabbit_stream_fanout", ns.stream),
        ("rabbit_qos_prefetch_count", ns.prefetch),
    ):
        cfg.CONF.set_override(option, value, group=group)

    if ns.command == "server":
        target = om.Target(topic=ns.topic, server=ns.server, exchange=ns.exchange)
        server = om.get_rpc_server(
            transport, target, [Endpoint(ns.server, ns.record)], executor="threading"
        )
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        server.start()
        print("READY", flush=True)
        done.wait()
        server.stop()
        server.wait()
        transport.cleanup()
        return 0

    client = om.get_rpc_client(transport, om.Target(topic=ns.topic, exchange=ns.exchange))
    kwargs = _kwargs(ns.args)
    if ns.command == "call":
        result = client.prepare(server=ns.server, timeout=20).call({}, ns.method, **kwargs)
        print(json.dumps(result), flush=True)
    else:
        client.prepare(fanout=True).cast({}, ns.method, **kwargs)
    transport.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
