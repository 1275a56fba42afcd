"""An oslo.messaging RPC server (threading executor) with one no-op endpoint.

``python -m benchmarks.contender_oslo URL EXCHANGE TOPIC SERVER``: the endpoint's ``echo``
ticks the probe and returns its arguments, as the other contenders do. Everything else is
oslo.messaging's defaults. SIGTERM or SIGINT stops the server.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from typing import Any

from rpcworker_benchplugin.probe import PROBE


class Endpoint:
    def echo(self, ctxt: Any, **kwargs: Any) -> dict[str, Any]:
        PROBE.tick()
        return kwargs


def main(argv: list[str]) -> int:
    url, exchange, topic, server_name = argv
    warnings.simplefilter("ignore")
    import oslo_messaging as om
    from oslo_config import cfg

    om.set_transport_defaults(control_exchange=exchange)
    cfg.CONF([], project="rpcworker-bench-oslo")
    transport = om.get_rpc_transport(cfg.CONF, url=url)
    target = om.Target(topic=topic, server=server_name)
    server = om.get_rpc_server(transport, target, [Endpoint()], executor="threading")
    serve(server, transport)
    return 0


def serve(server: Any, transport: Any) -> None:
    """Run an oslo.messaging server (or listener) until SIGTERM or SIGINT."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server.start()
    while not done.wait(0.5):
        pass
    server.stop()
    server.wait()
    transport.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
