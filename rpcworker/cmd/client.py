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
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import amqp.exceptions
import kombu
import kombu.exceptions
from oslo_config import cfg

from rpcworker import broker, config, protocol
from rpcworker.errors import ConfigError

PROG = "rpcworker-client"

EXIT_OK = 0
EXIT_REMOTE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_BROKER = 4

DEFAULT_TIMEOUT = 30.0
DEFAULT_EXCHANGE = "openstack"
EXCHANGE_TYPES = ("direct", "fanout", "topic")
#: how long one drain_events() may block, so that heartbeats keep being sent
_POLL = 1.0

_EPILOG = ("exit status: 0 ok, 1 remote error, 2 usage or configuration error, "
           "3 timeout, 4 broker unreachable or refused the operation (with --count: the "
           "status of the first failed request); 130 interrupted. --json: an error is one "
           'JSON object on stderr: {"error": {"type", "module", "message"}, "exit": N}')

#: ``error.module`` of the errors the client itself reports (not the remote method's)
CLIENT_MODULE = "rpcworker.cmd.client"
_ERROR_TYPES = {1: "RemoteError", 2: "UsageError", 3: "Timeout", 4: "BrokerError"}


class ClientError(Exception):
    """Ends the command: ``str()`` is printed on stderr, ``status`` is the exit status."""

    def __init__(self, status: int, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or _ERROR_TYPES.get(status, "Error")

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form: ``{"error": {"type", "module", "message"}, "exit": N}``."""
        return {"error": {"type": self.type, "module": CLIENT_MODULE,
                          "message": str(self)}, "exit": self.status}


class UsageError(ClientError):
    """A command-line error; ``usage`` is the usage text of the (sub)command."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(EXIT_USAGE, message)
        self.usage = usage


class RemoteCallError(ClientError):
    """The remote method raised: printed as ``Type: message``."""

    def __init__(self, failure: RemoteFailure, traceback: bool = False) -> None:
        super().__init__(EXIT_REMOTE, failure.line(), failure.cls)
        self.failure = failure
        self.traceback = traceback

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.failure.cls, "module": self.failure.module,
                                 "message": self.failure.message}
        if self.traceback and self.failure.traceback:
            error["traceback"] = "".join(self.failure.traceback).rstrip("\n")
        return {"error": error, "exit": self.status}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting (main prints it,
    as text or as JSON)."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())


# -- argument parsing -------------------------------------------------------------


_json_loads = protocol.loads


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
            f"{where}must be a JSON object, not {type(value).__name__}")
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


def merge_args(base: Mapping[str, Any] | None,
               pairs: Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    """``--args`` JSON, with each ``--arg k=v`` set over it (the last one wins)."""
    merged = dict(base or {})
    merged.update(pairs or [])
    return merged


def _config_options(p: argparse.ArgumentParser, dest_prefix: str) -> None:
    p.add_argument("--config-file", dest=f"{dest_prefix}config_file", action="append",
                   metavar="PATH", help="configuration file (as for rpcworker); repeatable")
    p.add_argument("--config-dir", dest=f"{dest_prefix}config_dir", action="append",
                   metavar="DIR", help="directory of *.conf files; repeatable")
    p.add_argument("--json", dest=f"{dest_prefix}json", action="store_true",
                   help="report an error as one JSON object on stderr: "
                   '{"error": {"type", "module", "message"}, "exit": N}')


def _rpc_options(p: argparse.ArgumentParser, *, server: bool, timeout: bool) -> None:
    p.add_argument("topic", metavar="TOPIC", help="RPC topic (oslo Target.topic)")
    p.add_argument("method", metavar="METHOD", help="remote method name")
    if server:
        p.add_argument("--server", help="send to TOPIC.SERVER (oslo prepare(server=...))")
        p.add_argument("--exchange", default=DEFAULT_EXCHANGE,
                       help="control exchange (default %(default)s; Nova uses nova)")
    if timeout:
        p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                       help="seconds to wait for the reply (default %(default)g); also "
                       "the request's expiration")
        p.add_argument("--call-monitor-timeout", type=positive_float, metavar="N",
                       help="ask the server for heartbeats every N/2 s and give up when "
                       "none arrives for N s (oslo call_monitor_timeout)")
        p.add_argument("--traceback", action="store_true",
                       help="print the remote traceback of a failure")
    p.add_argument("--arg", dest="arg", action="append", type=key_value, metavar="K=V",
                   help="one argument; V is JSON when it parses, else a string; repeatable")
    p.add_argument("--args", dest="args_json", type=json_object, metavar="JSON",
                   help="all arguments as a JSON object, or - to read it from stdin "
                   "(--arg values override it)")
    p.add_argument("--context", action="append", type=key_value, metavar="K=V",
                   help="request context entry (sent as _context_K); repeatable")
    p.add_argument("--version", help="requested API version, e.g. 1.2 (oslo Target.version)")
    p.add_argument("--namespace", help="API namespace (oslo Target.namespace)")
    p.add_argument("--count", type=positive_int, metavar="N",
                   help="load test: send N requests, then print one JSON summary line "
                   "(sent, ok, errors, elapsed and rate; calls also p50/p95 latency) "
                   "instead of the results")
    p.add_argument("--concurrency", type=positive_int, metavar="C",
                   help="with --count: over C connections, one thread each (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, epilog=_EPILOG,
        description="Send oslo.messaging RPC requests or raw JSON messages to the broker "
        "configured in rpcworker's configuration file.")
    _config_options(parser, "")
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
    p.add_argument("--type", choices=EXCHANGE_TYPES,
                   help="exchange type; used to declare the exchange (durable) when it "
                   "does not exist yet")
    p.add_argument("--routing-key", default="", help="routing key (default '')")
    p.add_argument("body", metavar="BODY_JSON", type=json_text, help="the message body")
    return parser


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
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def oslo_args(ns: argparse.Namespace) -> list[str]:
    """The ``--config-file``/``--config-dir`` arguments for oslo.config, in order given."""
    out: list[str] = []
    for option, dest in (("--config-file", "config_file"), ("--config-dir", "config_dir")):
        for value in (getattr(ns, dest, None) or []) + (getattr(ns, f"sub_{dest}", None) or []):
            out += [option, value]
    return out


# -- message bodies ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RpcRequest:
    """What the command line asks for, independent of the broker."""

    topic: str
    method: str
    args: Mapping[str, Any]
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    namespace: str | None = None
    version: str | None = None
    server: str | None = None
    exchange: str = DEFAULT_EXCHANGE

    @property
    def routing_key(self) -> str:
        return f"{self.topic}.{self.server}" if self.server else self.topic


def rpc_request(ns: argparse.Namespace) -> RpcRequest:
    return RpcRequest(
        topic=ns.topic,
        method=ns.method,
        args=merge_args(ns.args_json, ns.arg),
        context=dict(ns.context or []),
        namespace=ns.namespace,
        version=ns.version,
        server=getattr(ns, "server", None),
        exchange=getattr(ns, "exchange", DEFAULT_EXCHANGE),
    )


def inner_message(req: RpcRequest, *, msg_id: str | None = None, reply_q: str | None = None,
                  monitor_timeout: float | None = None,
                  unique_id: str | None = None) -> dict[str, Any]:
    """The inner dict, field for field and in the order oslo.messaging 18 builds it.

    ``msg_id`` and ``reply_q`` make it a call (with ``_timeout``); without them a cast.
    """
    return protocol.oslo_request(req.method, req.args, req.context, namespace=req.namespace,
                                 version=req.version, msg_id=msg_id, reply_q=reply_q,
                                 timeout=monitor_timeout, unique_id=unique_id)


envelope = protocol.envelope


# -- replies ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RemoteFailure:
    """The exception a server sent back (oslo serialize_remote_exception fields)."""

    cls: str
    module: str
    message: str
    traceback: tuple[str, ...] = ()

    def line(self) -> str:
        name = self.cls if self.module in ("", "builtins", "exceptions") else (
            f"{self.module}.{self.cls}")
        return f"{name}: {self.message}"


def parse_failure(failure: Any) -> RemoteFailure:
    """``failure`` as oslo sends it (a JSON string), or already a dict."""
    data = failure
    if isinstance(failure, str):
        try:
            data = _json_loads(failure)
        except ValueError:
            return RemoteFailure("RemoteError", "", failure)
    if not isinstance(data, dict):
        return RemoteFailure("RemoteError", "", str(data))
    tb = data.get("tb") or []
    return RemoteFailure(
        cls=str(data.get("class") or "RemoteError"),
        module=str(data.get("module") or ""),
        message=str(data.get("message", "")),
        traceback=tuple(str(line) for line in tb) if isinstance(tb, list) else (),
    )


class ReplyWaiter:
    """Collects the replies to one call, with oslo.messaging 18's client rules.

    Replies for another ``_msg_id`` are dropped; ``ending: false`` without a
    result is a call-monitor heartbeat; a truthy ``ending`` or a failure ends
    the call, keeping the last non-null result (so the pre-4.0 two-message
    form works too).
    """

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        self.done = False
        self.result: Any = None
        self.failure: RemoteFailure | None = None
        self.last_heard = time.monotonic()

    def feed(self, body: bytes | str) -> bool:
        """Take one reply body; True once the call is complete."""
        data = _decode_reply(body)
        if data is None or data.get("_msg_id") != self.msg_id:
            return self.done
        self.last_heard = time.monotonic()
        if data.get("failure"):
            self.failure = parse_failure(data["failure"])
            self.done = True
        elif data.get("result") is not None:
            self.result = data["result"]
        if data.get("ending"):
            self.done = True
        return self.done


def _decode_reply(body: bytes | str) -> dict[str, Any] | None:
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        data = _json_loads(text)
        if isinstance(data, dict) and protocol.OSLO_MESSAGE_KEY in data:
            data = _json_loads(data[protocol.OSLO_MESSAGE_KEY])
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


# -- broker -----------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    """An open connection plus what error messages need to know about it."""

    conn: kombu.Connection
    settings: broker.BrokerSettings

    @property
    def timeout(self) -> float:
        return float(self.settings.options["connect_timeout"])

    def scrub(self, text: str) -> str:
        """``text`` without any configured password in it."""
        for host in self.settings.hosts:
            if host.password:
                text = text.replace(host.password, "***")
        return text

    def broker_error(self, doing: str, exc: BaseException) -> ClientError:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return ClientError(EXIT_BROKER, self.scrub(f"broker error while {doing}: {reason}"))


def load_settings(argv: Sequence[str]) -> tuple[cfg.ConfigOpts, broker.BrokerSettings]:
    try:
        conf = config.prepare(argv, with_cli=False)
        return conf, broker.settings(conf)
    except ConfigError as exc:
        raise ClientError(EXIT_USAGE, f"configuration error: {exc}", "ConfigError") from None


def _broker_errors(conn: kombu.Connection) -> tuple[type[BaseException], ...]:
    return (kombu.exceptions.KombuError, amqp.exceptions.AMQPError, OSError,
            *conn.connection_errors, *conn.channel_errors)


def connect(conf: cfg.ConfigOpts, settings: broker.BrokerSettings) -> Session:
    """Connect with a few quick retries (each bounded by connect_timeout), else exit 4."""
    conn = broker.connection(conf, settings)
    conn.transport_options = dict(
        conn.transport_options or {},
        confirm_publish=True,  # as oslo.messaging: a cast is on the broker when we exit
        client_properties={"connection_name": f"{PROG}:{socket.gethostname()}:{os.getpid()}"},
    )
    session = Session(conn, settings)
    try:
        conn.ensure_connection(max_retries=2 * len(settings.hosts), interval_start=0.5,
                               interval_step=0.5, interval_max=1.0)
    except _broker_errors(conn) as exc:
        conn.release()
        reason = session.scrub(broker.explain(exc))
        raise ClientError(EXIT_BROKER, f"cannot connect to the broker at "
                          f"{broker.describe(settings)}: {reason}") from None
    return session


def exchange_exists(session: Session, name: str) -> bool:
    """Passive declare on a throw-away channel (a 404 closes the channel)."""
    if session.settings.folder is not None:  # filesystem://: bindings live in files
        return os.path.exists(os.path.join(session.settings.folder, "exchanges",
                                           f"{name}.exchange"))
    channel = session.conn.channel()
    try:
        channel.exchange_declare(exchange=name, type="topic", passive=True)
    except amqp.exceptions.NotFound:
        return False
    channel.close()
    return True


def ensure_exchange(session: Session, name: str, type_: str, *, durable: bool,
                    auto_delete: bool) -> bool:
    """Declare ``name`` unless it exists (never redeclare with other flags). True if created.

    filesystem://: an exchange's type lives in each process, so it is always declared."""
    local = session.settings.folder is not None
    if not name or (not local and exchange_exists(session, name)):
        return False
    channel = session.conn.channel()
    channel.exchange_declare(exchange=name, type=type_, durable=durable,
                             auto_delete=auto_delete)
    channel.close()
    return True


def publish(session: Session, body: bytes | str, exchange: str, routing_key: str,
            expiration: float | None = None,
            on_return: Callable[..., None] | None = None) -> None:
    """One confirmed publish: JSON, utf-8, persistent (kombu's and oslo's properties)."""
    channel = session.conn.default_channel
    # filesystem://: no basic.return (an unroutable message is dropped unseen)
    producer = kombu.Producer(channel, on_return=on_return
                              if hasattr(channel, "events") else None)
    producer.publish(
        body, exchange=exchange, routing_key=routing_key,
        content_type=protocol.JSON, content_encoding="utf-8", delivery_mode=2,
        expiration=expiration, mandatory=on_return is not None, retry=False,
        timeout=session.timeout,
    )


# -- commands ---------------------------------------------------------------------


class Caller:
    """Calls over one session, one after the other, with one reply queue for all."""

    def __init__(self, session: Session, req: RpcRequest, ns: argparse.Namespace) -> None:
        self.session, self.req = session, req
        self.timeout: float = ns.timeout
        self.monitor: float | None = ns.call_monitor_timeout
        # oslo declares the control exchange (topic, non-durable by default) before sending
        ensure_exchange(session, req.exchange, "topic", durable=False, auto_delete=False)
        self.reply_q = f"reply_{uuid.uuid4().hex}"
        self.waiter: ReplyWaiter | None = None
        queue = kombu.Queue(self.reply_q, durable=False, exclusive=True, auto_delete=True)
        kombu.Consumer(session.conn.default_channel, queues=[queue], no_ack=True,
                       on_message=self._on_reply).consume()

    def _on_reply(self, message: Any) -> None:
        if self.waiter is not None:  # replies to an earlier call that timed out: dropped
            self.waiter.feed(message.body)

    def call(self) -> ReplyWaiter:
        """One call: the complete waiter (result or failure); ClientError(3) on a timeout."""
        req = self.req
        self.waiter = waiter = ReplyWaiter(uuid.uuid4().hex)
        inner = inner_message(req, msg_id=waiter.msg_id, reply_q=self.reply_q,
                              monitor_timeout=self.monitor)
        publish(self.session, envelope(inner), req.exchange, req.routing_key,
                expiration=self.timeout)
        wait_reply(self.session, waiter, req, self.timeout, self.monitor)
        return waiter


def cmd_call(session: Session, ns: argparse.Namespace) -> int:
    waiter = Caller(session, rpc_request(ns), ns).call()
    if waiter.failure is not None:
        raise RemoteCallError(waiter.failure, traceback=ns.traceback)
    print(json.dumps(waiter.result, ensure_ascii=False))
    return EXIT_OK


def wait_reply(session: Session, waiter: ReplyWaiter, req: RpcRequest, timeout: float,
               monitor: float | None) -> None:
    """Drain the connection until the reply is complete; ClientError(3) on a timeout."""
    deadline = time.monotonic() + timeout
    while not waiter.done:
        now = time.monotonic()
        if now >= deadline:
            raise ClientError(EXIT_TIMEOUT, f"timed out after {timeout:g}s waiting for a reply "
                              f"to {req.method!r} sent to exchange {req.exchange!r} with "
                              f"routing key {req.routing_key!r} (is a server consuming "
                              "that topic?)")
        if monitor is not None and now - waiter.last_heard >= monitor:
            raise ClientError(EXIT_TIMEOUT, f"no heartbeat from the server for {monitor:g}s "
                              f"(--call-monitor-timeout) while waiting for {req.method!r}")
        session.conn.heartbeat_check()
        try:
            session.conn.drain_events(timeout=min(_POLL, deadline - now))
        except TimeoutError:
            continue


def caster(session: Session, ns: argparse.Namespace) -> Callable[[], None]:
    """Declare what a cast or fanout needs; return the function that sends one."""
    req = rpc_request(ns)
    if ns.command == "fanout":
        exchange, routing_key = f"{req.topic}_fanout", ""
        # as oslo's fanout_send declares it; an existing one is left as is (it may be
        # durable where the servers use rabbit_transient_quorum_queue)
        ensure_exchange(session, exchange, "fanout", durable=False, auto_delete=True)
    else:
        exchange, routing_key = req.exchange, req.routing_key
        ensure_exchange(session, exchange, "topic", durable=False, auto_delete=False)

    def send() -> None:  # a new _unique_id each time
        publish(session, envelope(inner_message(req)), exchange, routing_key)
    return send


def cmd_cast(session: Session, ns: argparse.Namespace) -> int:
    caster(session, ns)()
    return EXIT_OK


cmd_fanout = cmd_cast


def cmd_publish(session: Session, ns: argparse.Namespace) -> int:
    exchange: str = ns.exchange
    if exchange and not exchange_exists(session, exchange):
        if ns.type is None:
            raise ClientError(EXIT_USAGE, f"exchange {exchange!r} does not exist; give --type "
                              "to declare it")
        ensure_exchange(session, exchange, ns.type, durable=True, auto_delete=False)
        warn(ns, f"exchange {exchange!r} did not exist: declared it (type {ns.type}, durable)")
    elif exchange and session.settings.folder is not None:
        ensure_exchange(session, exchange, ns.type or "direct", durable=True,
                        auto_delete=False)
    returned: list[str] = []

    def on_return(exc: BaseException, *_: Any) -> None:
        returned.append(" ".join(str(exc).split()))

    publish(session, ns.body, exchange, ns.routing_key, on_return=on_return)
    if returned:
        warn(ns, f"warning: no queue is bound to exchange {exchange!r} for routing key "
             f"{ns.routing_key!r}: the broker dropped the message")
    return EXIT_OK


def warn(ns: argparse.Namespace, text: str) -> None:
    """A note on stderr: ``rpcworker-client: text``, or ``{"warning": text}`` with --json."""
    line = json.dumps({"warning": text}) if json_errors(ns, ()) else f"{PROG}: {text}"
    print(line, file=sys.stderr)


# -- --count: quick load ----------------------------------------------------------


@dataclasses.dataclass
class LoadRun:
    """Shared by the sender threads of one ``--count`` run."""

    count: int
    tickets: Iterator[int] = dataclasses.field(default_factory=itertools.count)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    first_error: ClientError | None = None

    def take(self) -> bool:
        """Whether one more request is to be sent (by the calling thread)."""
        with self.lock:
            return not self.stop.is_set() and next(self.tickets) < self.count

    def failed(self, exc: ClientError) -> None:
        with self.lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = exc


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(len(sorted_values) * fraction)) - 1]


def _load_worker(session: Session, ns: argparse.Namespace, state: LoadRun) -> None:
    """One thread: requests on its own connection until the tickets run out."""
    try:
        if ns.command == "call":
            caller = Caller(session, rpc_request(ns), ns)
            while state.take():
                start = time.monotonic()
                with state.lock:
                    state.sent += 1
                try:
                    waiter = caller.call()
                except ClientError as exc:  # timeout: the next call goes on
                    state.failed(exc)
                    continue
                if waiter.failure is not None:
                    state.failed(RemoteCallError(waiter.failure))
                else:
                    with state.lock:
                        state.ok += 1
                        state.latencies.append(time.monotonic() - start)
        else:
            send = caster(session, ns)
            while state.take():
                with state.lock:
                    state.sent += 1
                send()
                with state.lock:
                    state.ok += 1
    except _broker_errors(session.conn) as exc:  # this connection is done for
        state.failed(session.broker_error(f"running {ns.command}", exc))
    except ClientError as exc:
        state.failed(exc)


def run_load(conf: cfg.ConfigOpts, settings: broker.BrokerSettings,
             ns: argparse.Namespace) -> int:
    """``--count N --concurrency C``: N requests over C connections; a JSON summary."""
    count: int = ns.count
    sessions: list[Session] = []
    try:
        for _ in range(min(ns.concurrency or 1, count)):
            sessions.append(connect(conf, settings))
        state = LoadRun(count)
        threads = [threading.Thread(target=_load_worker, args=(s, ns, state), daemon=True,
                                    name=f"{PROG}-{i}") for i, s in enumerate(sessions)]
        start = time.monotonic()
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            state.stop.set()
            raise
        elapsed = time.monotonic() - start
    finally:
        for s in sessions:
            s.conn.release()
    summary: dict[str, Any] = {
        "command": ns.command, "count": count, "concurrency": len(sessions),
        "sent": state.sent, "ok": state.ok, "errors": state.errors,
        "elapsed": round(elapsed, 6),
        "rate": round(state.sent / elapsed, 3) if elapsed > 0 else None,
    }
    if ns.command == "call":
        latencies = sorted(state.latencies)
        for name, fraction in (("p50", 0.5), ("p95", 0.95)):
            value = _percentile(latencies, fraction)
            summary[name] = None if value is None else round(value, 6)
    print(json.dumps(summary), flush=True)
    if state.first_error is not None:
        raise LoadError(state.first_error, state.errors, count)
    return EXIT_OK


class LoadError(ClientError):
    """Some requests of a ``--count`` run failed: the exit status of the first failure."""

    def __init__(self, first: ClientError, errors: int, count: int) -> None:
        super().__init__(first.status, f"{errors} of {count} requests failed; the first: "
                         f"{first}", first.type)
        self.first, self.errors = first, errors

    def as_json(self) -> dict[str, Any]:
        return {**self.first.as_json(), "errors": self.errors}


COMMANDS: dict[str, Callable[[Session, argparse.Namespace], int]] = {
    "call": cmd_call,
    "cast": cmd_cast,
    "fanout": cmd_fanout,
    "publish": cmd_publish,
}


def run(ns: argparse.Namespace) -> int:
    conf, settings = load_settings(oslo_args(ns))
    if getattr(ns, "count", None) is not None:
        return run_load(conf, settings, ns)
    session = connect(conf, settings)
    try:
        return COMMANDS[ns.command](session, ns)
    except _broker_errors(session.conn) as exc:
        raise session.broker_error(f"running {ns.command}", exc) from None
    finally:
        session.conn.release()


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)


def report(exc: ClientError, as_json: bool) -> None:
    """Print the error that ends the command on stderr (one JSON object with --json)."""
    if as_json:
        print(json.dumps(exc.as_json(), ensure_ascii=False), file=sys.stderr)
    elif isinstance(exc, UsageError):
        sys.stderr.write(f"{exc.usage}{exc}\n")  # as argparse prints it
    elif isinstance(exc, RemoteCallError):
        if exc.traceback and exc.failure.traceback:
            sys.stderr.write("".join(exc.failure.traceback).rstrip("\n") + "\n")
        print(str(exc), file=sys.stderr)
    else:
        print(f"{PROG}: {exc}", file=sys.stderr)


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
        report(ClientError(130, "interrupted", "KeyboardInterrupt"), json_errors(ns, args))
        return 130


if __name__ == "__main__":
    sys.exit(main())
