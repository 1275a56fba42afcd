"""The client's connection to the broker: connect (a few quick retries), declare an
exchange only when it is missing, publish with confirms; broker errors as ``ClientError``
(exit 4) with any password scrubbed."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Sequence

import amqp.exceptions
import kombu
import kombu.exceptions
from oslo_config import cfg

from rpcworker.amqp import broker, transport
from rpcworker.client.args import DEFAULT_EXCHANGE
from rpcworker.client.exits import EXIT_BROKER, EXIT_USAGE, PROG, ClientError
from rpcworker.config import bindingconf, conffile, opts
from rpcworker.errors import ConfigError, oneline
from rpcworker.wire import envelope


@dataclasses.dataclass(frozen=True)
class OsloFlags:
    """How oslo.messaging, with the configuration's ``[oslo_messaging_rabbit]``, declares
    what the client may have to declare first (impl_rabbit.py: ``topic_send``,
    ``fanout_send``, ``_publish_and_creates_default_queue``)."""

    #: topic exchanges and notification queues: amqp_durable_queues or a quorum queue
    durable: bool = False
    #: the notification queue's arguments (quorum and its limits)
    queue_arguments: dict[str, object] = dataclasses.field(default_factory=dict)
    #: TOPIC_fanout exchanges: rabbit_transient_quorum_queue
    fanout_durable: bool = False

    @classmethod
    def of(cls, conf: cfg.ConfigOpts) -> OsloFlags:
        o = conf[opts.OSLO_RABBIT_GROUP]
        args = bindingconf.oslo_quorum_arguments(o) if o.rabbit_quorum_queue else {}
        return cls(
            durable=bool(o.amqp_durable_queues or o.rabbit_quorum_queue),
            queue_arguments=args,
            fanout_durable=bool(o.rabbit_transient_quorum_queue),
        )


@dataclasses.dataclass
class Session:
    """An open connection plus what error messages need to know about it."""

    conn: kombu.Connection
    settings: broker.BrokerSettings
    oslo: OsloFlags = dataclasses.field(default_factory=OsloFlags)

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
        reason = oneline(exc, with_type=False)
        return ClientError(EXIT_BROKER, self.scrub(f"broker error while {doing}: {reason}"))


def load_settings(argv: Sequence[str]) -> tuple[cfg.ConfigOpts, broker.BrokerSettings]:
    try:
        conf = conffile.prepare(argv, with_cli=False)
        return conf, broker.settings(conf)
    except ConfigError as exc:
        raise ClientError(EXIT_USAGE, f"configuration error: {exc}", "ConfigError") from None


def control_exchange(conf: cfg.ConfigOpts, topic: str) -> str:
    """The exchange of the configuration's enabled rpc binding on ``topic`` (so that
    ``call TOPIC`` reaches the worker the same file configures), else ``openstack``."""
    for name in conf.bindings:
        group = opts.register_binding_opts(conf, name)
        try:
            g = conf[group]
            if g.type == "rpc" and (g.topic or name) == topic:
                return str(g.exchange or DEFAULT_EXCHANGE)
        except (cfg.Error, ValueError):
            continue  # a bad binding is the daemon's to report
    return DEFAULT_EXCHANGE


def broker_errors(conn: kombu.Connection) -> tuple[type[BaseException], ...]:
    return (
        kombu.exceptions.KombuError,
        amqp.exceptions.AMQPError,
        OSError,
        *conn.connection_errors,
        *conn.channel_errors,
    )


def connect(
    conf: cfg.ConfigOpts, settings: broker.BrokerSettings, confirm_publish: bool = True
) -> Session:
    """Connect with a few quick retries (each bounded by connect_timeout), else exit 4.

    ``confirm_publish``: every publish waits for its confirm (py-amqp's mode); off for
    callers that put their channels in confirm mode themselves and pipeline confirms."""
    conn = broker.connection(conf, settings)
    conn.transport_options = dict(
        conn.transport_options or {},
        # as oslo.messaging: a cast is on the broker when we exit
        confirm_publish=confirm_publish,
        client_properties={"connection_name": f"{PROG}:{socket.gethostname()}:{os.getpid()}"},
    )
    session = Session(conn, settings, OsloFlags.of(conf))
    try:
        conn.ensure_connection(
            max_retries=2 * len(settings.hosts),
            interval_start=0.5,
            interval_step=0.5,
            interval_max=1.0,
        )
    except broker_errors(conn) as exc:
        conn.release()
        reason = session.scrub(broker.explain(exc))
        raise ClientError(
            EXIT_BROKER, f"cannot connect to the broker at {broker.describe(settings)}: {reason}"
        ) from None
    return session


def exchange_exists(session: Session, name: str) -> bool:
    """Passive declare on a throw-away channel (a 404 closes the channel)."""
    if session.settings.folder is not None:  # filesystem://: bindings live in files
        return os.path.exists(
            os.path.join(session.settings.folder, "exchanges", f"{name}.exchange")
        )
    channel = session.conn.channel()
    try:
        channel.exchange_declare(exchange=name, type="topic", passive=True)
    except amqp.exceptions.NotFound:
        return False
    channel.close()
    return True


def ensure_exchange(
    session: Session, name: str, type_: str, *, durable: bool, auto_delete: bool
) -> bool:
    """Declare ``name`` unless it exists (never redeclare with other flags). True if created.

    filesystem://: an exchange's type lives in each process, so it is always declared."""
    local = session.settings.folder is not None
    if not name or (not local and exchange_exists(session, name)):
        return False
    channel = session.conn.channel()
    channel.exchange_declare(exchange=name, type=type_, durable=durable, auto_delete=auto_delete)
    channel.close()
    return True


def ensure_queue(session: Session, name: str, exchange: str, routing_key: str) -> bool:
    """Declare queue ``name`` bound to ``exchange`` unless it exists (never redeclare with
    other flags: a listener may have declared it durable or quorum), as oslo's notifier
    would (``Session.oslo``). True if created."""
    if session.settings.folder is None:
        channel = session.conn.channel()
        try:
            channel.queue_declare(queue=name, passive=True)
            channel.close()
            return False
        except amqp.exceptions.NotFound:
            pass
    channel = session.conn.channel()
    oslo = session.oslo
    channel.queue_declare(
        queue=name,
        durable=oslo.durable,
        auto_delete=False,
        arguments=dict(oslo.queue_arguments) or None,
    )
    channel.queue_bind(queue=name, exchange=exchange, routing_key=routing_key)
    channel.close()
    return True


def publish(
    session: Session,
    body: bytes | str,
    exchange: str,
    routing_key: str,
    expiration: float | None = None,
    on_return: Callable[..., None] | None = None,
) -> None:
    """One confirmed publish: JSON, utf-8, persistent (kombu's and oslo's properties)."""
    channel = session.conn.default_channel
    # filesystem://: no basic.return (an unroutable message is dropped unseen)
    returns = transport.Capabilities.of(session.conn).returns
    producer = kombu.Producer(channel, on_return=on_return if returns else None)
    producer.publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        content_type=envelope.JSON,
        content_encoding="utf-8",
        delivery_mode=2,
        expiration=expiration,
        mandatory=on_return is not None,
        retry=False,
        timeout=session.timeout,
    )
