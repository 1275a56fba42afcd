"""conf -> [Binding]: the enabled bindings, validated, as frozen values."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from oslo_config import cfg

from rpcworker.config import conffile, opts
from rpcworker.errors import ConfigError

#: a binding's ``type`` (``opts.BINDING_TYPES``)
BindingType = Literal["rpc", "direct", "fanout", "topic", "notification"]
#: a binding's ``acknowledge``: after the handler (at-least-once) or on receipt
Acknowledge = Literal["after", "before"]
#: how an rpc binding's TOPIC_fanout messages reach each process ([oslo_messaging_rabbit]):
#: a classic queue per process, a quorum queue per process, or one shared stream
FanoutKind = Literal["classic", "quorum", "stream"]
#: ``fail(option, reason)``: the ConfigError naming the binding's group and the option
Fail = Callable[[str, str], ConfigError]

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
#: oslo.messaging's notification priorities (notify/dispatcher.py PRIORITIES)
PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")
_AMQP_SHORTSTR = 255


@dataclasses.dataclass(frozen=True)
class Binding:
    """One enabled ``[binding:NAME]`` group, with every default resolved."""

    name: str
    type: BindingType
    handler: str
    exchange: str
    durable: bool
    prefetch_count: int
    acknowledge: Acknowledge
    queue_arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    # rpc
    topic: str | None = None
    server: str | None = None
    #: the TOPIC_fanout queue: per-process classic or quorum queue, or a shared stream
    fanout: FanoutKind = "classic"
    #: its arguments (x-expires, x-queue-type, x-max-age, quorum limits), as oslo's;
    #: oslo's default: x-expires of rabbit_transient_queues_ttl (1800 s)
    fanout_arguments: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"x-expires": 1_800_000}, hash=False
    )
    #: ``HOSTNAME:PROCESSNAME`` of oslo's queue manager (stable fanout queue names)
    queue_manager: str | None = None
    # direct / fanout / topic
    queue: str | None = None  # None for fanout means a per-process queue
    routing_keys: tuple[str, ...] = ()
    auto_delete: bool = False
    exclusive: bool = False
    # failure policy
    max_retries: int = 0
    retry_delay: float = 1.0
    retry_delay_max: float = 300.0
    max_redeliveries: int = 0
    handler_timeout: float = 0.0
    #: most handler threads its deliveries hold at once (0: the whole pool)
    max_concurrency: int = 0
    # notification
    exchanges: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    #: resolved against the handler by plugins.resolve_priorities (empty until then: its own)
    priorities: tuple[str, ...] = ()
    pool: str | None = None
    filter_event_type: str | None = None
    filter_publisher_id: str | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    dead_letter_queue: str | None = None

    @property
    def group(self) -> str:
        return opts.binding_group(self.name)

    @property
    def ack_before(self) -> bool:
        return self.acknowledge == "before"

    @property
    def quorum(self) -> bool:
        return self.queue_arguments.get("x-queue-type") == "quorum"

    @property
    def delivery_limit(self) -> int:
        """The quorum queues' x-delivery-limit (0: none)."""
        if not self.quorum:
            return 0
        return max(0, int(self.queue_arguments.get("x-delivery-limit") or 0))

    @property
    def work_queues(self) -> tuple[str, ...]:
        """The named queues the binding consumes (not the per-process ones)."""
        if self.type == "rpc":
            return (f"{self.topic}", f"{self.topic}.{self.server}")
        if self.type == "notification":
            if self.pool:
                return (self.pool,)
            return tuple(f"{t}.{p}" for t in self.topics for p in self.priorities)
        return (self.queue,) if self.queue else ()

    @property
    def stream_fanout(self) -> bool:
        return self.type == "rpc" and self.fanout == "stream"

    def is_stream(self, queue: str) -> bool:
        """Whether ``queue`` is the stream this binding reads its fanout casts from."""
        return self.stream_fanout and queue == f"{self.topic}_fanout"

    def is_quorum_queue(self, queue: str) -> bool:
        """Whether ``queue`` (one the binding consumes) is a quorum queue: an rpc
        binding's per-process fanout queue stays classic, as oslo.messaging's."""
        return self.quorum and queue in self.work_queues

    @property
    def dead_letters_published(self) -> bool:
        """Dead letters go to a parking lot of ours (else: rejected to the queue's DLX)."""
        return bool(self.dead_letter_exchange or self.dead_letter_queue)

    def retry_delay_for(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1-based): doubling, capped."""
        return float(min(self.retry_delay * 2 ** (attempt - 1), self.retry_delay_max))


def parse(conf: cfg.ConfigOpts) -> list[Binding]:
    """Register and read every enabled binding group; raise ConfigError on the first fault."""
    names = list(conf.bindings)
    if not names:
        raise ConfigError(
            "DEFAULT",
            "bindings",
            "no binding enabled; list at least one NAME and configure it in a [binding:NAME] group",
        )
    _check_oslo_rabbit(conf)
    seen: set[str] = set()
    result = []
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(
                "DEFAULT",
                "bindings",
                f"invalid binding name {name!r} (letters, digits, _ . - only)",
            )
        if name in seen:
            raise ConfigError("DEFAULT", "bindings", f"binding {name!r} is listed twice")
        seen.add(name)
        result.append(_parse_one(conf, name))
    check_queues_unique(result)
    _check_exchanges_consistent(result)
    _check_parking_lots_consistent(result)
    return result


def _parse_one(conf: cfg.ConfigOpts, name: str) -> Binding:
    group = opts.register_binding_opts(conf, name)
    conffile.check_values(conf, group, opts.binding_opts)
    g = conf[group]

    def fail(option: str, reason: str) -> ConfigError:
        return ConfigError(group, option, reason)

    if not g.type:
        raise fail("type", f"required: one of {', '.join(opts.BINDING_TYPES)}")
    if not g.handler:
        raise fail(
            "handler",
            "required: the entry point name of a handler plugin (see `rpcworker --list-handlers`)",
        )
    args = _queue_arguments(g.queue_arguments, fail)
    oslo = conf[opts.OSLO_RABBIT_GROUP] if g.type in ("rpc", "notification") else None
    quorum = _apply_queue_type(g, args, fail, oslo)

    if g.type == "rpc":
        return _parse_rpc(conf, group, name, g, args, quorum, fail)
    if g.type == "notification":
        return _parse_notification(conf, group, name, g, args, quorum, fail)
    for option in ("priorities", "pool", "filter_event_type", "filter_publisher_id"):
        if conf[group][option] != _default(option):
            raise fail(option, f"only used by notification bindings, not {g.type}")
    return _parse_exchange_binding(conf, group, name, g, args, quorum, fail)


def _parse_rpc(
    conf: cfg.ConfigOpts,
    group: str,
    name: str,
    g: Any,
    args: dict[str, Any],
    quorum: bool,
    fail: Fail,
) -> Binding:
    """An oslo.messaging-style RPC server binding."""
    for option in ("queue", "routing_key", "auto_delete", "exclusive"):
        if conf[group][option] != _default(option):
            raise fail(
                option,
                "not used by rpc bindings: they declare exactly what an "
                "oslo.messaging server declares (see topic and server)",
            )
    topic = g.topic or name
    server = g.server or conf.host
    exchange = g.exchange or "openstack"
    oslo = conf[opts.OSLO_RABBIT_GROUP]
    durable = _oslo_durable(g, quorum, oslo)
    for option, value in (("topic", topic), ("server", server), ("exchange", exchange)):
        _check_name(value, option, fail)
    if quorum and not durable:
        raise fail("durable", _QUORUM_DURABLE)
    _check_oslo_auto_delete(quorum, oslo, fail)
    prefetch = _prefetch(g, oslo)
    fanout: FanoutKind = (
        "stream"
        if oslo.rabbit_stream_fanout
        else "quorum"
        if oslo.rabbit_transient_quorum_queue
        else "classic"
    )
    if fanout == "stream" and prefetch == 0:
        raise fail(
            "prefetch_count",
            "0 (unlimited) cannot read a stream: [oslo_messaging_rabbit] "
            "rabbit_stream_fanout needs a prefetch above 0 (as oslo.messaging)",
        )
    return Binding(
        name=name,
        type="rpc",
        handler=g.handler,
        exchange=exchange,
        durable=durable,
        prefetch_count=prefetch,
        acknowledge=g.acknowledge,
        queue_arguments=args,
        topic=topic,
        server=server,
        auto_delete=bool(oslo.amqp_auto_delete),
        fanout=fanout,
        fanout_arguments=_fanout_arguments(fanout, oslo),
        queue_manager=(f"{oslo.hostname}:{oslo.processname}" if oslo.use_queue_manager else None),
        **_policy(g, fail),
        max_concurrency=_concurrency_cap(conf, g, prefetch, fail),
    )


def _parse_notification(
    conf: cfg.ConfigOpts,
    group: str,
    name: str,
    g: Any,
    args: dict[str, Any],
    quorum: bool,
    fail: Fail,
) -> Binding:
    """An oslo.messaging-style notification listener."""
    for option in ("queue", "routing_key", "auto_delete", "exclusive", "server"):
        if conf[group][option] != _default(option):
            raise fail(
                option,
                "not used by notification bindings: they declare what "
                "oslo.messaging's notifiers and listeners declare (see topic, "
                "priorities and pool)",
            )
    exchanges = _names(g.exchange or "openstack", "exchange", fail)
    topics = _names(g.topic or "notifications", "topic", fail)
    priorities = tuple(p.strip().lower() for p in g.priorities if p.strip())
    for priority in priorities:
        if priority not in PRIORITIES:
            raise fail(
                "priorities", f"unknown priority {priority!r} (one of {', '.join(PRIORITIES)})"
            )
    if g.pool is not None:
        _check_name(g.pool, "pool", fail)
    for option in ("filter_event_type", "filter_publisher_id"):
        pattern = getattr(g, option)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise fail(option, f"not a regular expression: {exc}") from None
    oslo = conf[opts.OSLO_RABBIT_GROUP]
    durable = _oslo_durable(g, quorum, oslo)
    if quorum and not durable:
        raise fail("durable", _QUORUM_DURABLE)
    _check_oslo_auto_delete(quorum, oslo, fail)
    prefetch = _prefetch(g, oslo)
    return Binding(
        name=name,
        type="notification",
        handler=g.handler,
        exchange=exchanges[0],
        durable=durable,
        prefetch_count=prefetch,
        auto_delete=bool(oslo.amqp_auto_delete),
        acknowledge=g.acknowledge,
        queue_arguments=args,
        exchanges=exchanges,
        topics=topics,
        priorities=tuple(dict.fromkeys(priorities)),
        pool=g.pool,
        filter_event_type=g.filter_event_type,
        filter_publisher_id=g.filter_publisher_id,
        **_policy(g, fail),
        max_concurrency=_concurrency_cap(conf, g, prefetch, fail),
    )


def _names(value: str, option: str, fail: Fail) -> tuple[str, ...]:
    """A comma-separated list of exchange or topic names, each checked, in order."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise fail(option, "must not be empty")
    for n in names:
        _check_name(n, option, fail)
    return names


def _parse_exchange_binding(
    conf: cfg.ConfigOpts,
    group: str,
    name: str,
    g: Any,
    args: dict[str, Any],
    quorum: bool,
    fail: Fail,
) -> Binding:
    """A direct, topic or fanout exchange and its queue."""
    for option in ("topic", "server"):
        if conf[group][option] is not None:
            raise fail(option, f"only used by rpc bindings, not {g.type}")
    exchange = g.exchange or name
    _check_name(exchange, "exchange", fail)
    keys = _routing_keys(g, fail)
    queue = g.queue
    if queue is not None:
        _check_name(queue, "queue", fail)
    per_process = g.type == "fanout" and queue is None
    if queue is None and not per_process:
        queue = name
    if g.durable is not None:
        durable = bool(g.durable)
    else:
        durable = quorum or not per_process
    exclusive = True if per_process else bool(g.exclusive)
    auto_delete = True if per_process else bool(g.auto_delete)
    if quorum:
        if not durable:
            raise fail("durable", _QUORUM_DURABLE)
        if exclusive or auto_delete:
            raise fail(
                "exclusive" if exclusive else "auto_delete",
                "quorum queues cannot be exclusive or auto-delete"
                + (" (a fanout binding needs a named queue for that)" if per_process else ""),
            )
    return Binding(
        name=name,
        type=g.type,
        handler=g.handler,
        exchange=exchange,
        durable=durable,
        prefetch_count=_prefetch(g, None),
        acknowledge=g.acknowledge,
        queue_arguments=args,
        queue=queue,
        routing_keys=keys,
        auto_delete=auto_delete,
        exclusive=exclusive,
        **_policy(g, fail),
        max_concurrency=_concurrency_cap(conf, g, _prefetch(g, None), fail),
    )


def _routing_keys(g: Any, fail: Fail) -> tuple[str, ...]:
    """Exact keys (direct: at least one), patterns (topic: ``#`` by default), none
    (fanout)."""
    keys = tuple(k.strip() for k in g.routing_key if k.strip())
    if g.type == "direct" and not keys:
        raise fail("routing_key", "required for a direct binding: at least one exact key")
    if g.type == "topic" and not keys:
        keys = ("#",)
    if g.type == "fanout":
        keys = ()
    for key in keys:
        if len(key.encode()) > _AMQP_SHORTSTR:
            raise fail("routing_key", f"longer than {_AMQP_SHORTSTR} bytes: {key[:40]!r}...")
    return keys


_QUORUM_DURABLE = "quorum queues are always durable: set durable = true (or leave it unset)"

#: quorum-only options and the queue argument each sets when above 0 (oslo.messaging's
#: rabbit_quorum_delivery_limit, rabbit_quorum_max_memory_length, ..._bytes)
_QUORUM_ARGUMENTS = (
    ("delivery_limit", "x-delivery-limit"),
    ("quorum_max_memory_length", "x-max-in-memory-length"),
    ("quorum_max_memory_bytes", "x-max-in-memory-bytes"),
)


def _apply_queue_type(g: Any, args: dict[str, Any], fail: Fail, oslo: Any = None) -> bool:
    """Merge queue_type and the quorum options into ``args``; True for a quorum queue.

    ``oslo``: the ``[oslo_messaging_rabbit]`` group, for an rpc or notification binding:
    its rabbit_quorum_queue and rabbit_quorum_* fill in what the binding leaves unset."""
    given = args.get("x-queue-type")
    if g.queue_type is not None:
        if given is not None and given != g.queue_type:
            raise fail(
                "queue_type",
                f"{g.queue_type} disagrees with queue_arguments "
                f"x-queue-type:{given}; set the type in one place",
            )
        if g.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
    elif given is None and oslo is not None and oslo.rabbit_quorum_queue:
        args["x-queue-type"] = "quorum"
    quorum = args.get("x-queue-type") == "quorum"
    for option, argument in _QUORUM_ARGUMENTS:
        value = getattr(g, option)
        if not value and quorum and oslo is not None and argument not in args:
            value = getattr(oslo, _OSLO_QUORUM[option])
        if not value:
            continue
        if not quorum:
            raise fail(option, "only for quorum queues: set queue_type = quorum")
        if argument in args and args[argument] != value:
            raise fail(
                option,
                f"{value} disagrees with queue_arguments "
                f"{argument}:{args[argument]}; set it in one place",
            )
        args[argument] = value
    if quorum:
        _check_quorum_arguments(args, fail)
    return quorum


#: the binding's quorum options -> their ``[oslo_messaging_rabbit]`` names
_OSLO_QUORUM = {
    "delivery_limit": "rabbit_quorum_delivery_limit",
    "quorum_max_memory_length": "rabbit_quorum_max_memory_length",
    "quorum_max_memory_bytes": "rabbit_quorum_max_memory_bytes",
}
#: rpcworker's prefetch_count when neither the binding nor oslo's group sets one
DEFAULT_PREFETCH = 64


def _prefetch(g: Any, oslo: Any) -> int:
    """The binding's prefetch_count; else oslo's rabbit_qos_prefetch_count (rpc and
    notification bindings) when above 0; else 64."""
    if g.prefetch_count is not None:
        return int(g.prefetch_count)
    if oslo is not None and oslo.rabbit_qos_prefetch_count > 0:
        return int(oslo.rabbit_qos_prefetch_count)
    return DEFAULT_PREFETCH


def _oslo_durable(g: Any, quorum: bool, oslo: Any) -> bool:
    """The binding's durable; else oslo's: amqp_durable_queues or a quorum queue."""
    if g.durable is not None:
        return bool(g.durable)
    return quorum or bool(oslo.amqp_durable_queues)


def _check_oslo_auto_delete(quorum: bool, oslo: Any, fail: Fail) -> None:
    if quorum and oslo.amqp_auto_delete:
        raise ConfigError(
            opts.OSLO_RABBIT_GROUP,
            "amqp_auto_delete",
            "quorum queues cannot be auto-delete: unset it, or set this binding's "
            "queue_type = classic",
        )


def oslo_quorum_arguments(oslo: Any) -> dict[str, Any]:
    """A quorum queue's arguments as oslo.messaging builds them from its group:
    ``x-queue-type`` and the rabbit_quorum_* limits that are above 0."""
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    for option, argument in _QUORUM_ARGUMENTS:
        value = getattr(oslo, _OSLO_QUORUM[option])
        if value:
            args[argument] = value
    return args


def _fanout_arguments(kind: FanoutKind, oslo: Any) -> dict[str, Any]:
    """The TOPIC_fanout queue's arguments, as oslo.messaging 18's ``_get_queue_arguments``
    builds them for its fanout consumer."""
    ttl = int(oslo.rabbit_transient_queues_ttl)
    if kind == "stream":
        return {"x-queue-type": "stream", **({"x-max-age": f"{ttl}s"} if ttl else {})}
    args = oslo_quorum_arguments(oslo) if kind == "quorum" else {}
    if ttl:
        args["x-expires"] = ttl * 1000
    return args


def _check_oslo_rabbit(conf: cfg.ConfigOpts) -> None:
    """The ``[oslo_messaging_rabbit]`` combinations oslo.messaging refuses too."""
    oslo = conf[opts.OSLO_RABBIT_GROUP]
    if oslo.rabbit_stream_fanout and not oslo.rabbit_transient_quorum_queue:
        raise ConfigError(
            opts.OSLO_RABBIT_GROUP,
            "rabbit_stream_fanout",
            "needs rabbit_transient_quorum_queue = true (as oslo.messaging: the "
            "TOPIC_fanout exchange is then durable, as the stream is)",
        )
    if oslo.use_queue_manager:
        for option in ("hostname", "processname"):
            value = getattr(oslo, option)
            if not value or any(c.isspace() for c in value):
                raise ConfigError(
                    opts.OSLO_RABBIT_GROUP, option, f"{value!r}: must be a non-empty word"
                )


def _check_quorum_arguments(args: Mapping[str, Any], fail: Fail) -> None:
    """x-delivery-limit and x-max-in-memory-* given in queue_arguments are integers."""
    for option, argument in _QUORUM_ARGUMENTS:
        value = args.get(argument)
        if value is not None and (type(value) is not int or value < 0):
            raise fail(
                "queue_arguments",
                f"{argument}: {value!r} is not an integer >= 0 (prefer the {option} option)",
            )


def _policy(g: Any, fail: Fail) -> dict[str, Any]:
    """The failure-policy fields of a binding group, validated."""
    if g.retry_delay_max < g.retry_delay:
        raise fail("retry_delay_max", f"{g.retry_delay_max} is below retry_delay ({g.retry_delay})")
    if g.dead_letter_routing_key is not None and not g.dead_letter_exchange:
        raise fail("dead_letter_routing_key", "needs dead_letter_exchange")
    for option in ("dead_letter_exchange", "dead_letter_queue"):
        if getattr(g, option) is not None:
            _check_name(getattr(g, option), option, fail)
    return {
        "max_retries": g.max_retries,
        "retry_delay": g.retry_delay,
        "retry_delay_max": g.retry_delay_max,
        "max_redeliveries": g.max_redeliveries,
        "handler_timeout": g.handler_timeout,
        "dead_letter_exchange": g.dead_letter_exchange,
        "dead_letter_routing_key": g.dead_letter_routing_key,
        "dead_letter_queue": g.dead_letter_queue,
    }


def _concurrency_cap(conf: cfg.ConfigOpts, g: Any, prefetch: int, fail: Fail) -> int:
    """``max_concurrency``, checked against the pool and the prefetch window."""
    limit, pool = g.max_concurrency, conf.executor_thread_pool_size
    if limit > pool:
        raise fail(
            "max_concurrency",
            f"{limit} is more than the handler threads of a "
            f"worker process ([DEFAULT] executor_thread_pool_size = {pool})",
        )
    if limit and prefetch and limit > prefetch:
        raise fail(
            "max_concurrency",
            f"{limit} is more than prefetch_count "
            f"({prefetch}): no more deliveries are ever in flight",
        )
    return int(limit)


def _default(option: str) -> Any:
    for opt in opts.binding_opts:
        if opt.name == option:
            return opt.default
    raise KeyError(option)


def _check_name(value: str, option: str, fail: Fail) -> None:
    if not value or not value.strip():
        raise fail(option, "must not be empty")
    if value != value.strip() or any(c.isspace() for c in value):
        raise fail(option, f"must not contain spaces: {value!r}")
    if len(value.encode()) > _AMQP_SHORTSTR:
        raise fail(option, f"longer than {_AMQP_SHORTSTR} bytes")
    if value.startswith("amq."):
        raise fail(option, f"{value!r}: names starting with 'amq.' are reserved by the broker")


def _queue_arguments(raw: Mapping[str, str], fail: Fail) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.strip()
        if not key:
            raise fail("queue_arguments", "empty argument name")
        if value is None or value == "":
            raise fail("queue_arguments", f"{key}: missing value (write {key}:VALUE)")
        args[key] = _scalar(value.strip())
    return args


def _scalar(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def check_queues_unique(bindings: list[Binding]) -> None:
    """No queue is consumed by two bindings."""
    owner: dict[str, str] = {}
    for b in bindings:
        for q in b.work_queues:
            if q in owner:
                option = {"rpc": "topic", "notification": "pool" if b.pool else "topic"}.get(
                    b.type, "queue"
                )
                raise ConfigError(
                    b.group, option, f"queue {q!r} is already consumed by binding {owner[q]!r}"
                )
            owner[q] = b.name


def _check_exchanges_consistent(bindings: list[Binding]) -> None:
    """Bindings sharing an exchange must declare it alike, or the broker refuses (406)."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for b in bindings:
        kind = "topic" if b.type in ("rpc", "notification") else b.type
        for exchange in b.exchanges or (b.exchange,):
            first = seen.setdefault(exchange, (b.name, kind, b.durable))
            if first[1:] != (kind, b.durable):
                raise ConfigError(
                    b.group,
                    "exchange" if first[1] != kind else "durable",
                    f"exchange {exchange!r} is also used by binding "
                    f"{first[0]!r} as type {first[1]}, durable={first[2]}; this "
                    f"binding would declare it as type {kind}, "
                    f"durable={b.durable}",
                )


def _check_parking_lots_consistent(bindings: list[Binding]) -> None:
    """A dead_letter_queue is declared with its binding's queue type: bindings sharing
    one must agree, or the second declaration is refused (406)."""
    seen: dict[str, Binding] = {}
    for b in bindings:
        if b.dead_letter_queue is None:
            continue
        first = seen.setdefault(b.dead_letter_queue, b)
        if first.quorum != b.quorum:
            kinds = {True: "quorum", False: "classic"}
            raise ConfigError(
                b.group,
                "dead_letter_queue",
                f"queue {b.dead_letter_queue!r} is also the parking lot of "
                f"binding {first.name!r}, a {kinds[first.quorum]} binding; "
                f"this {kinds[b.quorum]} binding would declare it as a "
                f"{kinds[b.quorum]} queue",
            )
