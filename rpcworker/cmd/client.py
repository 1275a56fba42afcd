"""``rpcworker-client``: the operator's tool to call, cast and publish.

Requests use oslo.messaging's wire format (envelope 2.0, the inner fields in the
order oslo.messaging 18 sends them), so the tool works against rpcworker and
against real OpenStack services alike. The broker comes from the same config
file as the daemon (``--config-file`` / ``--config-dir``).

Exit status: 0 success, 1 the remote method raised, 2 usage or configuration
error, 3 no reply in time, 4 broker unreachable or refused an operation.

``--json``: an error is one JSON object on stderr, ``{"error": {"type", "module",
"message"}, "exit": N}`` (warnings: ``{"warning": "..."}``); results are JSON on
stdout either way. ``--count N [--concurrency C]``: N requests over C connections
(one thread each), then one JSON summary line on stdout.

Reply queue: ``reply_<uuid hex>``, non-durable, **exclusive and auto-delete**
(oslo.messaging uses a non-exclusive queue with ``x-expires`` because its
transport lives as long as the service). A one-shot tool is better served by a
queue that disappears with its connection, even after ``kill -9``, instead of
lingering for 30 minutes per invocation; RabbitMQ 4 also deprecates transient
non-exclusive queues. Servers reply through the default exchange, which
delivers to an exclusive queue like to any other.

The work is done in ``rpcworker.client`` (one module per job); this module is the
entry point: parse, run, report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rpcworker.client import parkedcmds
from rpcworker.client.args import json_errors, oslo_args, parse_args
from rpcworker.client.commands import COMMANDS
from rpcworker.client.connect import broker_errors, connect, control_exchange, load_settings
from rpcworker.client.exits import EXIT_INTERRUPTED, EXIT_USAGE, ClientError, report
from rpcworker.client.load import run_load


def run(ns: argparse.Namespace) -> int:
    conf, settings = load_settings(oslo_args(ns))
    if "exchange" in ns and ns.exchange is None and "topic" in ns:
        ns.exchange = control_exchange(conf, ns.topic)
    if getattr(ns, "count", None) is not None:
        return run_load(conf, settings, ns)
    # parked: its copies are confirmed in a window, not one by one (client.browse)
    session = connect(conf, settings, confirm_publish=ns.command != "parked")
    try:
        if ns.command == "parked":
            return parkedcmds.run(conf, session, ns)
        return COMMANDS[ns.command](session, ns)
    except broker_errors(session.conn) as exc:
        raise session.broker_error(f"running {ns.command}", exc) from None
    finally:
        session.conn.release()


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    ns: argparse.Namespace | None = None
    try:
        ns = parse_args(args)
        return run(ns)
    except SystemExit as exc:  # argparse: --help (0)
        return _exit_status(exc)
    except ClientError as exc:
        report(exc, json_errors(ns, args))
        return exc.status
    except KeyboardInterrupt:
        report(
            ClientError(EXIT_INTERRUPTED, "interrupted", "KeyboardInterrupt"), json_errors(ns, args)
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
