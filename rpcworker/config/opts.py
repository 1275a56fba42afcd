"""Every configuration option of rpcworker, and ``list_opts()`` for oslo-config-generator."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from oslo_config import cfg

BINDING_TYPES = ("rpc", "direct", "fanout", "topic", "notification")

default_opts = [
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Name of this server. RPC bindings consume from the <topic>.<host> queue "
        "so that callers can target this server (prepare(server=...)).",
    ),
    cfg.ListOpt(
        "bindings",
        default=[],
        mutable=True,
        help="Names of the enabled bindings. Each NAME is configured in a [binding:NAME] "
        "group; groups not listed here are ignored.",
    ),
    cfg.StrOpt(
        "transport_url",
        secret=True,
        help="Broker URL in oslo.messaging form: "
        "rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost?heartbeat=30 . "
        "Several hosts give failover. When set it overrides the host, port, "
        "credentials and virtual host of [broker]; query parameters override "
        "other [broker] options of the same name.",
    ),
    cfg.IntOpt(
        "executor_thread_pool_size",
        default=16,
        min=1,
        help="Number of handler threads per worker process.",
    ),
    cfg.IntOpt(
        "workers",
        default=1,
        min=1,
        help="Number of worker processes. 1 runs everything in the main process. N > 1 "
        "runs a supervisor (cotyledon) with N worker processes, each with its own "
        "connection, consumers, handler threads and handler instances; a worker that "
        "dies is restarted. SIGTERM/SIGINT, SIGHUP and systemd notifications go "
        "through the supervisor (NotifyAccess=main stays right).",
    ),
    cfg.IntOpt(
        "duplicate_cache_size",
        default=1024,
        min=0,
        help="How many completed request ids (oslo _unique_id, AMQP message_id) each worker "
        "remembers. A redelivered or re-sent request whose id is there is not run again: "
        "it is acked, and a call gets the remembered reply. 0 disables it.",
    ),
    cfg.IntOpt(
        "max_message_size",
        default=16 * 1024 * 1024,
        min=1024,
        help="Largest message body, in bytes, that is decoded. A larger one is rejected "
        "(dead-lettered where the queue has a dead-letter exchange) without being decoded.",
    ),
    cfg.IntOpt(
        "max_inflight_bytes",
        default=192 * 1024 * 1024,
        min=0,
        help="Bytes of message bodies a worker process holds at most: counted from the "
        "moment a delivery is received until it is settled (acked, rejected, or its "
        "retry or dead-letter copy confirmed). At the budget the worker cancels its "
        "consumers (basic.cancel: what it holds stays unacked and is settled as usual, "
        "nothing is redelivered) and consumes again once enough of it is free; each "
        "consumer's prefetch window is also cut to its share of the budget in "
        "messages of the recent size. A message larger than the budget is handled "
        "alone. Memory above idle is about twice this (the raw body and its decoded "
        "value): see the Performance page to size MemoryMax=. At least max_message_size; "
        "0 disables the budget (memory then grows with prefetch_count x message size).",
    ),
    cfg.IntOpt(
        "max_stuck_threads",
        default=8,
        min=0,
        help="Handler threads stuck in a handler past its handler_timeout that a worker "
        "process replaces with fresh ones (a thread cannot be killed). One more, and the "
        "process recycles itself: it stops taking messages, lets the others finish (up "
        "to graceful_shutdown_timeout) and a fresh process takes its place (workers = 1: "
        "the same process re-executes itself; workers > 1: the supervisor starts a new "
        "one).",
    ),
    cfg.IntOpt(
        "max_messages_per_worker",
        default=0,
        min=0,
        help="Recycle a worker process (as for max_stuck_threads) once it has handled this "
        "many messages, as Celery's worker_max_tasks_per_child. 0: never. With workers > 1 "
        "the processes recycle one at a time.",
    ),
    cfg.IntOpt(
        "max_memory_per_worker",
        default=0,
        min=0,
        help="Recycle a worker process (as for max_stuck_threads) once its resident memory "
        "(RSS) passes this many MiB, as Celery's worker_max_memory_per_child; checked "
        "twice a second. 0: never.",
    ),
    cfg.IntOpt(
        "graceful_shutdown_timeout",
        default=60,
        min=0,
        help="Seconds a SIGTERM/SIGINT waits for in-flight handlers to finish. "
        "Messages still being handled after that are left unacknowledged and the "
        "broker redelivers them.",
    ),
]

broker_opts = [
    cfg.HostAddressOpt("hostname", default="localhost", help="Broker host name or IP address."),
    cfg.PortOpt("port", default=5672, help="Broker port (5671 is the usual TLS port)."),
    cfg.StrOpt("userid", default="guest", help="User name to log in with."),
    cfg.StrOpt("password", default="guest", secret=True, help="Password. Never logged."),
    cfg.StrOpt("virtual_host", default="/", help="RabbitMQ virtual host."),
    cfg.BoolOpt(
        "insist",
        default=False,
        help="Accepted for compatibility with older Kombu configurations. "
        "AMQP 0-9-1 ignores it; a warning is logged when it is true.",
    ),
    cfg.FloatOpt(
        "connect_timeout",
        default=10.0,
        min=0.1,
        help="Seconds to wait for the TCP connection and AMQP handshake.",
    ),
    cfg.BoolOpt("ssl", default=False, help="Connect to the broker over TLS."),
    cfg.StrOpt("ssl_ca_file", help="CA bundle to verify the broker's certificate with."),
    cfg.StrOpt("ssl_cert_file", help="Client certificate (for mutual TLS)."),
    cfg.StrOpt("ssl_key_file", help="Private key of the client certificate."),
    cfg.BoolOpt(
        "ssl_verify_hostname",
        default=True,
        help="Check that the broker's certificate matches the host name connected to.",
    ),
    cfg.IntOpt(
        "heartbeat",
        default=60,
        min=0,
        help="AMQP heartbeat interval in seconds that is proposed to the broker; 0 "
        "disables heartbeats. A dead connection is noticed after about two intervals.",
    ),
    cfg.StrOpt(
        "login_method",
        default="AMQPLAIN",
        choices=["AMQPLAIN", "PLAIN", "EXTERNAL"],
        help="SASL login method.",
    ),
    cfg.IntOpt(
        "consumer_timeout",
        default=1800,
        min=0,
        help="The broker's consumer_timeout in seconds (RabbitMQ's default is 30 minutes): "
        "a delivery unacked for longer closes the channel. rpcworker warns at start-up when "
        "a binding's handler_timeout is not below it (or is unlimited). 0: the broker has "
        "none.",
    ),
    cfg.StrOpt(
        "failover_strategy",
        default="round-robin",
        choices=["round-robin", "shuffle"],
        help="How the hosts of transport_url are tried when the connection fails.",
    ),
    cfg.FloatOpt(
        "reconnect_interval_start",
        default=1.0,
        min=0.0,
        help="Seconds before the first reconnection attempt.",
    ),
    cfg.FloatOpt(
        "reconnect_interval_step",
        default=2.0,
        min=0.0,
        help="Seconds added to the wait after each failed reconnection attempt.",
    ),
    cfg.FloatOpt(
        "reconnect_interval_max",
        default=30.0,
        min=0.1,
        help="Longest wait between two reconnection attempts.",
    ),
]

binding_opts = [
    cfg.StrOpt(
        "type",
        choices=[
            (
                "rpc",
                "an oslo.messaging RPC server: queues TOPIC and TOPIC.SERVER on the "
                "topic exchange, and the TOPIC_fanout exchange with a per-process queue",
            ),
            ("direct", "one queue bound with exact routing keys"),
            ("fanout", "one queue that gets a copy of everything published on the exchange"),
            ("topic", "one queue bound with patterns (* one word, # zero or more words)"),
            (
                "notification",
                "an oslo.messaging notification listener: queues "
                "TOPIC.PRIORITY (or one POOL queue) on the topic exchange(s) the notifiers "
                "publish to",
            ),
        ],
        help="What the binding declares and consumes. Required.",
    ),
    cfg.StrOpt(
        "handler",
        help="Entry point name, in group rpcworker.handlers, of the handler plugin that "
        "gets this binding's messages (see `rpcworker --list-handlers`). Required.",
    ),
    cfg.StrOpt(
        "exchange",
        help="Exchange to bind to. rpc: the control exchange, default 'openstack' "
        "(Nova uses 'nova'). notification: the control exchange(s) the notifiers publish "
        "to, a comma-separated list (e.g. nova, glance, cinder), default 'openstack'. Other "
        "types: default the binding's name.",
    ),
    cfg.StrOpt(
        "topic",
        help="rpc: the RPC topic, default the binding's name. notification: "
        "the notification topics, a comma-separated list, default 'notifications' "
        "(Nova's versioned ones: versioned_notifications).",
    ),
    cfg.ListOpt(
        "priorities",
        default=[],
        help="notification only: the priorities consumed, out of audit, debug, info, warn, "
        "error, critical, sample. Default: those the handler has a method for (as "
        "oslo.messaging's notification dispatcher); one it has no method for is an error.",
    ),
    cfg.StrOpt(
        "pool",
        help="notification only: as oslo.messaging's pool=, one queue named POOL bound "
        "with every TOPIC.PRIORITY key on every exchange: each pool gets every "
        "notification, and the workers of one pool share them. Default: the queues "
        "TOPIC.PRIORITY that oslo's notifiers and listeners declare.",
    ),
    cfg.StrOpt(
        "filter_event_type",
        help="notification only: a regular expression (Python re.match, as "
        "oslo.messaging's NotificationFilter); a notification whose event_type does not "
        "match is acked without reaching the handler.",
    ),
    cfg.StrOpt(
        "filter_publisher_id",
        help="notification only: as filter_event_type, for the publisher_id.",
    ),
    cfg.StrOpt("server", help="rpc only: the server name. Default: [DEFAULT] host."),
    cfg.StrOpt(
        "queue",
        help="Queue name (not for rpc). direct/topic default: the binding's name. "
        "fanout default: a per-process exclusive, auto-delete queue, so that every "
        "process gets a copy of every message.",
    ),
    cfg.ListOpt(
        "routing_key",
        default=[],
        help="Binding keys. direct: exact keys (at least one). topic: patterns with * "
        "(one word) and # (zero or more words); default '#'. fanout: unused.",
    ),
    cfg.BoolOpt(
        "durable",
        help="Queue and exchange survive a broker restart. Default: true for quorum "
        "queues (queue_type); false for rpc (as oslo.messaging's amqp_durable_queues) and "
        "for a default fanout queue; true otherwise.",
    ),
    cfg.BoolOpt("auto_delete", default=False, help="Delete the queue when its last consumer goes."),
    cfg.BoolOpt(
        "exclusive",
        default=False,
        help="The queue belongs to this connection only, and is deleted with it (it is "
        "always declared auto-delete too).",
    ),
    cfg.DictOpt(
        "queue_arguments",
        default={},
        help="Queue arguments, e.g. x-max-length:100000. Integers and true/false are "
        "converted. rpc: applied to the TOPIC and TOPIC.SERVER queues. For quorum queues "
        "prefer queue_type and the options below to x-queue-type, x-delivery-limit, ...",
    ),
    cfg.StrOpt(
        "queue_type",
        choices=[
            ("classic", "a classic queue (RabbitMQ's default)"),
            ("quorum", "a replicated, durable quorum queue (x-queue-type: quorum)"),
        ],
        help="Type of the binding's queue. Default: classic, unless queue_arguments sets "
        "x-queue-type (which must then agree with this option). quorum makes durable "
        "default to true (durable = false is an error) and cannot be exclusive or "
        "auto-delete. rpc: the TOPIC and TOPIC.SERVER queues and the topic exchange are "
        "declared exactly as an oslo.messaging server with rabbit_quorum_queue = true and "
        "the same rabbit_quorum_* values, which every server sharing the topic must use "
        "(else the broker refuses with 406 PRECONDITION_FAILED); the per-process fanout "
        "queue stays classic (oslo's rabbit_transient_quorum_queue = false). Delay queues "
        "of a quorum binding (<queue>.retry.<ms>.quorum) and its dead_letter_queue are "
        "quorum queues too. A classic queue cannot become a quorum queue in place: "
        "delete it (or use another name) first; `rpcworker --check-config --broker` "
        "shows the conflict.",
    ),
    cfg.IntOpt(
        "delivery_limit",
        default=0,
        min=0,
        help="quorum only (oslo's rabbit_quorum_delivery_limit): x-delivery-limit of the "
        "queue(s); 0 sets none. The broker delivers a message at most delivery_limit + 1 "
        "times (x-delivery-count 0 .. delivery_limit) and then drops it, or dead-letters "
        "it to the queue's x-dead-letter-exchange. rpcworker does not run the last of "
        "those deliveries (x-delivery-count >= delivery_limit): it dead-letters it itself, "
        "with its reason, so a handler that crashes or hangs runs at most delivery_limit "
        "times and the message is never lost silently. Combined with max_redeliveries, the "
        "smaller bound wins.",
    ),
    cfg.IntOpt(
        "quorum_max_memory_length",
        default=0,
        min=0,
        help="quorum only (oslo's rabbit_quorum_max_memory_length): "
        "x-max-in-memory-length of the queue(s), the most messages kept in memory; 0 sets "
        "none.",
    ),
    cfg.IntOpt(
        "quorum_max_memory_bytes",
        default=0,
        min=0,
        help="quorum only (oslo's rabbit_quorum_max_memory_bytes): x-max-in-memory-bytes "
        "of the queue(s), the most message bytes kept in memory; 0 sets none.",
    ),
    cfg.IntOpt(
        "prefetch_count",
        min=0,
        sample_default="64",
        help="Deliveries the broker may have in flight to this binding's consumer "
        "(basic.qos, per consumer); 0 means unlimited. Default: 64; rpc and notification "
        "bindings take [oslo_messaging_rabbit] rabbit_qos_prefetch_count when that is "
        "above 0.",
    ),
    cfg.IntOpt(
        "max_retries",
        default=3,
        min=0,
        help="Failure policy: how many times a cast or event whose handler failed (or "
        "raised rpcworker.Requeue) is tried again, after retry_delay, before it is "
        "dead-lettered. Retries wait in per-binding delay queues (<queue>.retry.<ms>, "
        "<queue>.retry.<ms>.quorum for a quorum binding: a message TTL that dead-letters back "
        "to the work queue), never unacked in the worker. "
        "0 dead-letters at the first failure. Calls are never retried: the caller gets the "
        "error.",
    ),
    cfg.FloatOpt(
        "retry_delay",
        default=1.0,
        min=0.001,
        help="Seconds before the first retry; each further retry waits twice as long, up "
        "to retry_delay_max.",
    ),
    cfg.FloatOpt(
        "retry_delay_max",
        default=300.0,
        min=0.001,
        help="Longest wait between two retries, in seconds.",
    ),
    cfg.IntOpt(
        "max_redeliveries",
        default=5,
        min=0,
        help="A message redelivered by the broker (its worker crashed, hung or lost the "
        "connection while handling it) more than this many times is a poison message: it "
        "is dead-lettered without being run again. Counted by the broker's x-delivery-count "
        "on quorum queues, by rpcworker (header x-rpcworker-redeliveries) on classic queues. "
        "0 disables the check. On a quorum binding with delivery_limit L > 0 the bound is "
        "min(max_redeliveries, L - 1) (0 meaning off): the broker's last delivery is never "
        "run.",
    ),
    cfg.FloatOpt(
        "handler_timeout",
        default=1500.0,
        min=0.0,
        help="Seconds a handler may run, counted from the moment it starts (time spent "
        "waiting for a thread does not count); after that its message is treated as "
        "failed (a call gets a HandlerTimeout error, a cast follows the failure policy). "
        "A thread stuck in a sync handler is replaced by a fresh one (see "
        "max_stuck_threads); an async handler's task is cancelled. 0 means no limit. Keep "
        "it below the broker's consumer_timeout (the default, 25 minutes, is below "
        "RabbitMQ's 30): a warning is logged at start-up otherwise.",
    ),
    cfg.IntOpt(
        "max_concurrency",
        default=0,
        min=0,
        help="Most handler threads this binding's deliveries hold at once; further "
        "deliveries wait (unacknowledged, in order) for one of them to finish, so a slow "
        "or stuck binding cannot take every thread from the others. 0: the fair default: "
        "a binding alone in its process has the whole pool ([DEFAULT] "
        "executor_thread_pool_size); with others, the pool less half a fair share kept "
        "back for each of them (pool // (2 x bindings), at least 1 thread), and never less "
        "than a fair share (pool // bindings). With a pool of 16 and 2 bindings, 12 each. "
        "At most executor_thread_pool_size, and at most prefetch_count (when that is not "
        "0).",
    ),
    cfg.StrOpt(
        "dead_letter_exchange",
        help="Exchange that dead-lettered messages are published to (with headers "
        "x-rpcworker-failure, x-rpcworker-binding, x-rpcworker-retries, "
        "x-rpcworker-original-exchange, x-rpcworker-original-routing-key). When neither "
        "this nor dead_letter_queue is set, a dead-lettered message is rejected without "
        "requeue, so the queue's own x-dead-letter-exchange (queue_arguments) applies.",
    ),
    cfg.StrOpt(
        "dead_letter_routing_key",
        help="Routing key for dead_letter_exchange. Default: the message's original key.",
    ),
    cfg.StrOpt(
        "dead_letter_queue",
        help="A parking-lot queue, declared durable by rpcworker, with the binding's "
        "queue type (a quorum queue for a quorum binding). Without "
        "dead_letter_exchange, dead letters are published to it directly; with it, the "
        "queue is bound to that exchange with dead_letter_routing_key (or '#').",
    ),
    cfg.StrOpt(
        "acknowledge",
        default="after",
        choices=[
            ("after", "ack once the handler has returned: at-least-once"),
            ("before", "ack on receipt, before the handler runs: at-most-once, as oslo.messaging"),
        ],
        help="When a delivery is acknowledged.",
    ),
]

metrics_opts = [
    cfg.StrOpt(
        "listen",
        default="",
        help="HOST:PORT of the HTTP endpoint serving Prometheus metrics (/metrics), "
        "liveness (/healthz) and readiness (/readyz), e.g. 127.0.0.1:9464. Empty: no "
        "endpoint. With workers > 1 the supervisor serves it for the whole service.",
    ),
]

#: options only given on the command line of `rpcworker`
#: ``[oslo_messaging_rabbit]``: oslo.messaging's own names and defaults
#: (oslo_messaging/_drivers/impl_rabbit.py, 18.x), for the oslo-shaped bindings (rpc and
#: notification), so that the section pasted from nova.conf declares what Nova's servers
#: declare. A binding's own option wins where both are set.
oslo_rabbit_opts = [
    cfg.BoolOpt(
        "rabbit_quorum_queue",
        default=False,
        help="rpc and notification bindings: their queues (TOPIC, TOPIC.SERVER; "
        "TOPIC.PRIORITY or POOL) are quorum queues and their exchanges durable, as "
        "oslo.messaging's. A binding's queue_type wins.",
    ),
    cfg.BoolOpt(
        "rabbit_transient_quorum_queue",
        default=False,
        help="rpc bindings: the per-process fanout queue TOPIC_fanout_<id> is a durable "
        "quorum queue (with x-expires), and the TOPIC_fanout exchange durable, as "
        "oslo.messaging's. Needed on a RabbitMQ 4 broker that denies transient "
        "non-exclusive queues (deprecated_features.permit.transient_nonexcl_queues = "
        "false). Also rpcworker-client's fanout exchange.",
    ),
    cfg.BoolOpt(
        "rabbit_stream_fanout",
        default=False,
        help="rpc bindings: one shared stream TOPIC_fanout (x-queue-type: stream) instead "
        "of a queue per process; each process reads it with its own offset, starting at "
        "the next message, resuming after the last one handled when it reconnects. Needs "
        "rabbit_transient_quorum_queue = true and a prefetch above 0 (as oslo.messaging).",
    ),
    cfg.IntOpt(
        "rabbit_transient_queues_ttl",
        default=1800,
        min=0,
        help="Seconds: the x-expires of the per-process fanout queues (0: none), or, with "
        "rabbit_stream_fanout, the stream's retention (x-max-age; 0: kept forever).",
    ),
    cfg.IntOpt(
        "rabbit_qos_prefetch_count",
        default=0,
        min=0,
        help="The prefetch_count of rpc and notification bindings that set none. 0 leaves "
        "rpcworker's default (64): unlike oslo.messaging, rpcworker never asks for an "
        "unlimited window by default.",
    ),
    cfg.BoolOpt(
        "amqp_durable_queues",
        default=False,
        help="rpc and notification bindings: durable queues and exchanges (a binding's "
        "durable wins). Also the exchanges and notification queues rpcworker-client "
        "declares.",
    ),
    cfg.BoolOpt(
        "amqp_auto_delete",
        default=False,
        help="rpc and notification bindings: their exchanges and queues are auto-delete, as "
        "oslo.messaging's topic consumers.",
    ),
    cfg.IntOpt(
        "rabbit_quorum_delivery_limit",
        default=0,
        min=0,
        help="x-delivery-limit of the quorum queues of rpc and notification bindings that "
        "set no delivery_limit (0: none set; RabbitMQ 4 then applies its own default, 20).",
    ),
    cfg.IntOpt(
        "rabbit_quorum_max_memory_length",
        default=0,
        min=0,
        help="x-max-in-memory-length of those quorum queues (0: none).",
    ),
    cfg.IntOpt(
        "rabbit_quorum_max_memory_bytes",
        default=0,
        min=0,
        help="x-max-in-memory-bytes of those quorum queues (0: none).",
    ),
    cfg.BoolOpt(
        "use_queue_manager",
        default=False,
        help="Stable names for the per-process fanout queues: TOPIC_fanout_HOSTNAME:"
        "PROCESSNAME:N, N the worker process (1 .. workers), so a restarted process takes "
        "its queue back instead of leaving one behind. Unique per process; two daemons "
        "on one host serving one topic need different processname values.",
    ),
    cfg.StrOpt(
        "hostname",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Host name in the queue manager's queue names.",
    ),
    cfg.StrOpt(
        "processname",
        default="rpcworker",
        help="Process name in the queue manager's queue names.",
    ),
]

cli_opts = [
    cfg.BoolOpt(
        "check-config",
        default=False,
        help="Load the configuration and every handler plugin, print what would be "
        "declared, and exit (0 when valid, 2 otherwise).",
    ),
    cfg.BoolOpt(
        "broker",
        dest="check_broker",
        default=False,
        help="With --check-config: also connect to the broker and compare what the "
        "configuration would declare with what exists there (exit 1 on a conflict).",
    ),
    cfg.BoolOpt(
        "list-handlers",
        default=False,
        help="List the installed handler plugins and exit.",
    ),
]

BROKER_GROUP = "broker"
METRICS_GROUP = "metrics"
OSLO_RABBIT_GROUP = "oslo_messaging_rabbit"
BINDING_GROUP_PREFIX = "binding:"


def binding_group(name: str) -> str:
    return BINDING_GROUP_PREFIX + name


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the static options (not the per-binding groups) on ``conf``."""
    conf.register_opts(default_opts)
    conf.register_opts(broker_opts, group=BROKER_GROUP)
    conf.register_opts(metrics_opts, group=METRICS_GROUP)
    conf.register_opts(oslo_rabbit_opts, group=OSLO_RABBIT_GROUP)


for _opt in binding_opts:  # SIGHUP re-reads bindings: all their options are mutable
    _opt.mutable = True


def register_binding_opts(conf: cfg.ConfigOpts, name: str) -> str:
    """Register the options of ``[binding:NAME]``; returns the group name."""
    group = binding_group(name)
    conf.register_opts(binding_opts, group=group)
    return group


_broker_help = (
    "The Kombu connection to RabbitMQ. [DEFAULT] transport_url, when set, takes the "
    "hosts, credentials and virtual host from its URL instead."
)

_binding_help = (
    "One group per name listed in [DEFAULT] bindings, e.g. [binding:compute]. "
    "Acknowledgement and failure policy: with acknowledge = after (the default) a "
    "delivery is acked once its handler has returned, so a crash or a lost connection "
    "redelivers it (at-least-once). A call whose handler raises is acked and the caller "
    "gets the error. A cast or event whose handler raises (or raises rpcworker.Requeue) "
    "is retried up to max_retries times with growing delays, then dead-lettered; "
    "rpcworker.Reject dead-letters it at once. A message redelivered more than "
    "max_redeliveries times (its worker crashed or hung) is dead-lettered without running. "
    "Messages that are not JSON are dead-lettered and logged, never executed. No message "
    "loops forever."
)


_oslo_rabbit_help = (
    "oslo.messaging's RabbitMQ options, with oslo's names and meaning, for the rpc and "
    "notification bindings: paste the section from nova.conf and those bindings declare "
    "what Nova's servers declare (quorum queues, transient quorum queues, stream fanout, "
    "stable queue names). A binding's own option (queue_type, durable, delivery_limit, "
    "quorum_max_memory_*, prefetch_count) wins where both are set. Options of oslo's that "
    "are not listed here are ignored. See the RabbitMQ 4 page of the documentation."
)


def list_opts() -> list[tuple[str | cfg.OptGroup | None, Iterable[cfg.Opt]]]:
    """Options for oslo-config-generator (namespace ``rpcworker``)."""
    return [
        (None, default_opts),
        (cfg.OptGroup(BROKER_GROUP, help=_broker_help), broker_opts),
        (cfg.OptGroup(binding_group("NAME"), help=_binding_help), binding_opts),
        (cfg.OptGroup(METRICS_GROUP, help="Prometheus metrics and health endpoint."), metrics_opts),
        (cfg.OptGroup(OSLO_RABBIT_GROUP, help=_oslo_rabbit_help), oslo_rabbit_opts),
    ]
