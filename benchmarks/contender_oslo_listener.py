"""An oslo.messaging notification listener (threading executor) with one no-op endpoint.

``python -m benchmarks.contender_oslo_listener URL EXCHANGE TOPIC``: the endpoint's ``info``
ticks the probe, as rpcworker's ``bench_notify`` does. Everything else is oslo.messaging's
defaults. SIGTERM or SIGINT stops the listener.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from rpcworker_benchplugin.probe import PROBE

from benchmarks.contender_oslo import serve


class Endpoint:
    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        PROBE.tick()


def main(argv: list[str]) -> int:
    url, exchange, topic = argv
    warnings.simplefilter("ignore")
    import oslo_messaging as om
    from oslo_config import cfg

    om.set_transport_defaults(control_exchange=exchange)
    cfg.CONF([], project="rpcworker-bench-oslo-listener")
    transport = om.get_notification_transport(cfg.CONF, url=url)
    listener = om.get_notification_listener(
        transport, [om.Target(topic=topic)], [Endpoint()], executor="threading"
    )
    serve(listener, transport)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
