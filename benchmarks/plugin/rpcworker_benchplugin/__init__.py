"""Handler plugins of rpcworker's benchmark harness (``benchmarks/``).

- ``bench_echo``: rpcworker's built-in ``echo`` handler plus one probe tick per message, so
  the harness sees when the last message was handled (see ``probe.py``). Every contender
  of the drain benchmark runs this same no-op: tick, return the arguments.
- ``bench_notify``: a notification handler whose ``info`` method ticks the probe.
- ``burn``: a CPU-bound handler; its ``burn`` method spends ``[bench] burn_iterations``
  turns of a pure-Python loop (the harness calibrates them to about 2 ms), then ticks.
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

from rpcworker.handlers.echo import EchoHandler
from rpcworker_benchplugin.probe import PROBE

_opts = [
    cfg.IntOpt(
        "burn_iterations",
        default=20_000,
        min=0,
        help="Turns of the pure-Python loop of one `burn` call.",
    ),
]


def spin(iterations: int) -> int:
    """Pure-Python CPU work: holds the GIL the whole time."""
    x = 0
    for i in range(iterations):
        x = (x + i * i) % 1_000_003
    return x


class BenchEcho(EchoHandler):
    """rpcworker's echo handler that also ticks the benchmark probe."""

    def echo(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Return the keyword arguments unchanged (and tick the probe)."""
        PROBE.tick()
        return kwargs

    def handle_message(self, message: Any) -> Any:
        """Events tick the probe too."""
        PROBE.tick()
        return message.body


class BenchNotify:
    """A notification handler: ``info`` ticks the probe."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        pass

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        """Tick the probe."""
        PROBE.tick()


class Burn:
    """A CPU-bound handler: `burn` spins [bench] burn_iterations loop turns."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(_opts, group="bench")
        self.iterations = conf.bench.burn_iterations

    def burn(self, ctxt: dict[str, Any], **kwargs: Any) -> int:
        """Spin, tick the probe, return the loop's result."""
        result = spin(self.iterations)
        PROBE.tick()
        return result
