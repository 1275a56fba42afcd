"""``rpcworker-client``'s command line: the parser, the argument types, and what
oslo.config is given of it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rpcworker.client.exits import PROG, UsageError
from rpcworker.config.conffile import version_string
from rpcworker.wire import envelope

DEFAULT_TIMEOUT = 30.0
DEFAULT_EXCHANGE = "openstack"
EXCHANGE_TYPES = ("direct", "fanout", "topic")

_EPILOG = (
    "exit status: 0 ok, 1 remote error, 2 usage or configuration error, "
    "3 timeout, 4 broker unreachable or refused the operation (with --count: the "
    "status of the first failed request); 130 interrupted. --json: an error is one "
    'JSON object on stderr: {"error": {"type", "module", "message"}, "exit": N}'
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting (main prints it,
    as text or as JSON)."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())


_json_loads = envelope.loads


def json_value(text: str) -> Any:
    """``text`` as JSON when it parses (``1`` -> 1, ``[1]`` -> [1]), else the string itself."""
    try:
        return _json_loads(text)
    except ValueError:
        return text


def key_value(text: str) -> tuple[str, Any]:
    """argparse type of ``--arg``/``--context``: ``k=v`` with ``v`` parsed by json_value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, json_value(value)


def json_object(text: str) -> dict[str, Any]:
    """argparse type of ``--args``: a JSON object; ``-`` reads it from stdin."""
    where = ""
    if text == "-":
        text, where = sys.stdin.read(), "stdin: "
    try:
        value = _json_loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{where}not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{where}must be a JSON object, not {type(value).__name__}"
        )
    return value


def json_text(text: str) -> str:
    """argparse type of a raw JSON body: validated, returned unchanged."""
    try:
        _json_loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    return text


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def merge_args(
    base: Mapping[str, Any] | None, pairs: Sequence[tuple[str, Any]] | None
) -> dict[str, Any]:
    """``--args`` JSON, with each ``--arg k=v`` set over it (the last one wins)."""
    merged = dict(base or {})
    merged.update(pairs or [])
    return merged


def _config_options(p: argparse.ArgumentParser, dest_prefix: str) -> None:
    p.add_argument(
        "--config-file",
        dest=f"{dest_prefix}config_file",
        action="append",
        metavar="PATH",
        help="configuration file (as for rpcworker); repeatable",
    )
    p.add_argument(
        "--config-dir",
        dest=f"{dest_prefix}config_dir",
        action="append",
        metavar="DIR",
        help="directory of *.conf files; repeatable",
    )
    p.add_argument(
        "--json",
        dest=f"{dest_prefix}json",
        action="store_true",
        help="report an error as one JSON object on stderr: "
        '{"error": {"type", "module", "message"}, "exit": N}',
    )


def _rpc_options(p: argparse.ArgumentParser, *, server: bool, timeout: bool) -> None:
    p.add_argument("topic", metavar="TOPIC", help="RPC topic (oslo Target.topic)")
    p.add_argument("method", metavar="METHOD", help="remote method name")
    if server:
        p.add_argument("--server", help="send to TOPIC.SERVER (oslo prepare(server=...))")
        p.add_argument(
            "--exchange",
            help="control exchange (default: the exchange of the configuration's rpc "
            f"binding on TOPIC, else {DEFAULT_EXCHANGE}; Nova uses nova)",
        )
    if timeout:
        p.add_argument(
            "--timeout",
            type=positive_float,
            default=DEFAULT_TIMEOUT,
            help="seconds to wait for the reply (default %(default)g); also "
            "the request's expiration",
        )
        p.add_argument(
            "--call-monitor-timeout",
            type=positive_float,
            metavar="N",
            help="ask the server for heartbeats every N/2 s and give up when "
            "none arrives for N s (oslo call_monitor_timeout)",
        )
        p.add_argument(
            "--traceback", action="store_true", help="print the remote traceback of a failure"
        )
    p.add_argument(
        "--arg",
        dest="arg",
        action="append",
        type=key_value,
        metavar="K=V",
        help="one argument; V is JSON when it parses, else a string; repeatable",
    )
    p.add_argument(
        "--args",
        dest="args_json",
        type=json_object,
        metavar="JSON",
        help="all arguments as a JSON object, or - to read it from stdin "
        "(--arg values override it)",
    )
    p.add_argument(
        "--context",
        action="append",
        type=key_value,
        metavar="K=V",
        help="request context entry (sent as _context_K); repeatable",
    )
    p.add_argument("--version", help="requested API version, e.g. 1.2 (oslo Target.version)")
    p.add_argument("--namespace", help="API namespace (oslo Target.namespace)")
    p.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="load test: send N requests, then print one JSON summary line "
        "(sent, ok, errors, elapsed and rate; calls also p50/p95 latency) "
        "instead of the results",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="C",
        help="with --count: over C connections, one thread each (default 1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        epilog=_EPILOG,
        description="Send oslo.messaging RPC requests or raw JSON messages to the broker "
        "configured in rpcworker's configuration file.",
    )
    _config_options(parser, "")
    parser.add_argument(
        "--version", action="version", version=version_string(), help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    specs = [
        ("call", "call METHOD and print its JSON result", True, True),
        ("cast", "send METHOD without waiting for a result", True, False),
        ("fanout", "cast METHOD to every server of TOPIC (exchange TOPIC_fanout)", False, False),
    ]
    for name, text, server, timeout in specs:
        p = sub.add_parser(name, help=text, description=text, epilog=_EPILOG)
        _config_options(p, "sub_")
        _rpc_options(p, server=server, timeout=timeout)
    text = "publish a raw JSON message to an exchange"
    p = sub.add_parser("publish", help=text, description=text, epilog=_EPILOG)
    _config_options(p, "sub_")
    p.add_argument("--exchange", required=True, help="exchange name ('' is the default exchange)")
    p.add_argument(
        "--type",
        choices=EXCHANGE_TYPES,
        help="exchange type; used to declare the exchange (durable) when it does not exist yet",
    )
    p.add_argument("--routing-key", default="", help="routing key (default '')")
    p.add_argument("body", metavar="BODY_JSON", type=json_text, help="the message body")
    _notify_parser(sub)
    _parked_parser(sub)
    return parser


PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")


def _notify_parser(sub: Any) -> None:
    text = "send a notification exactly as an oslo.messaging Notifier (messagingv2) does"
    p = sub.add_parser("notify", help=text, description=text, epilog=_EPILOG)
    _config_options(p, "sub_")
    p.add_argument("event_type", metavar="EVENT_TYPE", help="e.g. compute.instance.create.end")
    p.add_argument(
        "--priority",
        default="info",
        choices=PRIORITIES,
        help="notification priority (default %(default)s)",
    )
    p.add_argument(
        "--payload",
        type=json_object,
        metavar="JSON",
        help="the payload, a JSON object, or - to read it from stdin (--arg values override it)",
    )
    p.add_argument(
        "--arg",
        dest="arg",
        action="append",
        type=key_value,
        metavar="K=V",
        help="one payload field; V is JSON when it parses; repeatable",
    )
    p.add_argument(
        "--publisher-id",
        default="rpcworker-client",
        help="publisher_id (default %(default)s; Nova's: compute.HOST)",
    )
    p.add_argument(
        "--exchange",
        default=DEFAULT_EXCHANGE,
        help="control exchange (default %(default)s; Nova publishes to nova)",
    )
    p.add_argument(
        "--topic",
        default="notifications",
        help="notification topic (default %(default)s); routing key TOPIC.PRIORITY",
    )
    p.add_argument(
        "--context",
        action="append",
        type=key_value,
        metavar="K=V",
        help="request context entry (sent as _context_K); repeatable",
    )


_PARKED_EPILOG = (
    "exit status: 0 done, 1 replay: some messages could not be replayed (each named on "
    "stderr; they stay parked), 2 usage or configuration error (purge without --yes: "
    "says how many it would delete), 4 broker unreachable or lost (replay: what was "
    "replayed is out of the lot, the rest still parked; run it again). list, export and "
    "dry runs leave every message in place and in order. Counts and notes go to stderr."
)

_PARKED = (
    (
        "list",
        "one line per parked message (binding, reason, retries, origin, method or "
        "event, ids, size, age); leaves them in place and in order",
    ),
    (
        "replay",
        "publish parked messages back to their original exchange and routing key "
        "(or --to-queue) with confirms and mandatory, retry counters reset, then remove them",
    ),
    ("purge", "delete parked messages (refuses without --yes)"),
    (
        "export",
        "write parked messages (headers, properties, exact body) as JSON lines, "
        "leaving them in place; rpcworker.testing.HandlerFixture.replay() reads the file",
    ),
)


def _parked_parser(sub: Any) -> None:
    text = "the parking lots of the configured bindings: list, replay, purge, export"
    p = sub.add_parser(
        "parked",
        help=text,
        description=text + ". A binding's parking "
        "lot is its dead_letter_queue, or the queues bound to its "
        "dead_letter_exchange (found through the management API).",
        epilog=_PARKED_EPILOG,
    )
    commands = p.add_subparsers(dest="parked_command", metavar="PARKED_COMMAND", required=True)
    for name, help_text in _PARKED:
        c = commands.add_parser(name, help=help_text, description=help_text, epilog=_PARKED_EPILOG)
        _config_options(c, "sub_")
        c.add_argument(
            "--binding",
            metavar="NAME",
            help="only this binding's parking lot "
            "(and, in a lot shared by several bindings, its messages)",
        )
        c.add_argument(
            "--queue",
            metavar="QUEUE",
            help="read this queue as a parking lot "
            "instead of the configured ones (e.g. a queue filled by a queue's own "
            "x-dead-letter-exchange)",
        )
        c.add_argument(
            "--reason",
            metavar="REGEX",
            help="only messages whose failure reason matches REGEX (re.search)",
        )
        if name == "list":
            c.add_argument(
                "--limit", type=positive_int, metavar="N", help="list at most N messages"
            )
        elif name == "replay":
            c.add_argument(
                "--count",
                dest="replay_count",
                type=positive_int,
                metavar="N",
                help="replay at most N messages (head first)",
            )
            c.add_argument(
                "--dry-run",
                action="store_true",
                help="say what would be replayed where; move nothing",
            )
            c.add_argument(
                "--to-queue",
                metavar="QUEUE",
                help="publish to QUEUE (default exchange) instead of the "
                "original exchange and routing key",
            )
        elif name == "purge":
            c.add_argument("--yes", action="store_true", help="really delete them")
        else:
            c.add_argument(
                "--output",
                required=True,
                metavar="FILE",
                help="the JSON lines file to write (- for stdout)",
            )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line: UsageError on a usage error, SystemExit(0) for --help."""
    parser = build_parser()
    ns = parser.parse_args(list(argv))
    if getattr(ns, "concurrency", None) is not None and ns.count is None:
        parser.error("--concurrency needs --count")
    return ns


def json_errors(ns: argparse.Namespace | None, argv: Sequence[str]) -> bool:
    """Whether ``--json`` was given (before the options parse: a scan of ``argv``)."""
    if ns is not None:
        return bool(getattr(ns, "json", False) or getattr(ns, "sub_json", False))
    argv = list(argv)
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def oslo_args(ns: argparse.Namespace) -> list[str]:
    """The ``--config-file``/``--config-dir`` arguments for oslo.config, in order given."""
    out: list[str] = []
    for option, dest in (("--config-file", "config_file"), ("--config-dir", "config_dir")):
        for value in (getattr(ns, dest, None) or []) + (getattr(ns, f"sub_{dest}", None) or []):
            out += [option, value]
    return out
