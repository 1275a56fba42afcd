from __future__ import annotations

from collections.abc import Callable

import pytest
from oslo_config import cfg

from rpcworker.config import bindingconf, conffile
from rpcworker.errors import ConfigError

MakeConf = Callable[..., cfg.ConfigOpts]


def parse(make_conf: MakeConf, text: str) -> list[bindingconf.Binding]:
    return bindingconf.parse(make_conf(text))


def error_of(make_conf: MakeConf, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        bindingconf.parse(make_conf(text))
    return info.value


def test_rpc_binding_defaults(make_conf: MakeConf) -> None:
    [b] = parse(
        make_conf,
        """
        [DEFAULT]
        host = h1
        bindings = compute
        [binding:compute]
        type = rpc
        handler = echo
        """,
    )
    assert (b.type, b.topic, b.server, b.exchange) == ("rpc", "compute", "h1", "openstack")
    assert b.durable is False and b.acknowledge == "after" and b.prefetch_count == 64


def test_topic_binding_full(make_conf: MakeConf) -> None:
    [b] = parse(
        make_conf,
        """
        [DEFAULT]
        bindings = audit
        [binding:audit]
        type = topic
        handler = log
        exchange = events
        queue = audit
        routing_key = instance.*.create, volume.#
        durable = true
        queue_arguments = x-queue-type:quorum, x-max-length:100000, x-single-active-consumer:true
        prefetch_count = 10
        acknowledge = before
        """,
    )
    assert b.routing_keys == ("instance.*.create", "volume.#")
    assert b.queue_arguments == {
        "x-queue-type": "quorum",
        "x-max-length": 100000,
        "x-single-active-consumer": True,
    }
    assert b.ack_before and b.prefetch_count == 10 and b.queue == "audit"


def test_fanout_default_queue_is_per_process(make_conf: MakeConf) -> None:
    [b] = parse(
        make_conf,
        """
        [DEFAULT]
        bindings = bc
        [binding:bc]
        type = fanout
        handler = log
        """,
    )
    assert b.queue is None and b.exclusive and b.auto_delete and not b.durable
    assert b.exchange == "bc" and b.routing_keys == ()


def test_topic_defaults_to_hash_and_direct_queue_to_name(make_conf: MakeConf) -> None:
    t, d = parse(
        make_conf,
        """
        [DEFAULT]
        bindings = t, d
        [binding:t]
        type = topic
        handler = log
        [binding:d]
        type = direct
        handler = log
        routing_key = k1
        """,
    )
    assert t.routing_keys == ("#",) and t.queue == "t" and t.durable
    assert d.routing_keys == ("k1",) and d.queue == "d"


@pytest.mark.parametrize(
    "body, group, option, words",
    [
        ("[binding:b]\ntype = nope\nhandler = echo", "binding:b", "type", "nope"),
        ("[binding:b]\nhandler = echo", "binding:b", "type", "required"),
        ("[binding:b]\ntype = rpc", "binding:b", "handler", "required"),
        ("[binding:b]\ntype = direct\nhandler = echo", "binding:b", "routing_key", "direct"),
        (
            "[binding:b]\ntype = direct\nhandler = echo\nrouting_key = k\ntopic = t",
            "binding:b",
            "topic",
            "rpc",
        ),
        ("[binding:b]\ntype = rpc\nhandler = echo\nqueue = q", "binding:b", "queue", "rpc"),
        (
            "[binding:b]\ntype = topic\nhandler = echo\ndurable = false\n"
            "queue_arguments = x-queue-type:quorum",
            "binding:b",
            "durable",
            "quorum",
        ),
        (
            "[binding:b]\ntype = topic\nhandler = echo\nprefetch_count = -1",
            "binding:b",
            "prefetch_count",
            "",
        ),
        (
            "[binding:b]\ntype = topic\nhandler = echo\nacknowledge = sometimes",
            "binding:b",
            "acknowledge",
            "",
        ),
        ("[binding:b]\ntype = topic\nhandler = echo\nqueue = amq.x", "binding:b", "queue", "amq."),
        (
            "[binding:b]\ntype = topic\nhandler = echo\nqueue_arguments = x-max-length",
            "binding:b",
            "queue_arguments",
            "",
        ),
    ],
)
def test_bad_binding_names_group_and_option(
    make_conf: MakeConf, body: str, group: str, option: str, words: str
) -> None:
    exc = error_of(make_conf, "[DEFAULT]\nbindings = b\n" + body + "\n")
    assert (exc.group, exc.option) == (group, option)
    assert words in exc.reason
    line = str(exc)
    assert "\n" not in line and line.startswith(f"[{group}] {option}: ")


def test_no_bindings_is_an_error(make_conf: MakeConf) -> None:
    exc = error_of(make_conf, "[DEFAULT]\n")
    assert (exc.group, exc.option) == ("DEFAULT", "bindings")


def test_same_queue_twice_is_an_error(make_conf: MakeConf) -> None:
    exc = error_of(
        make_conf,
        """
        [DEFAULT]
        bindings = a, b
        [binding:a]
        type = direct
        handler = echo
        routing_key = k
        queue = shared
        [binding:b]
        type = topic
        handler = echo
        queue = shared
        """,
    )
    assert exc.group == "binding:b" and "shared" in exc.reason


@pytest.mark.parametrize(
    "text, group, option",
    [
        ("[broker]\nport = 70000\n", "broker", "port"),
        ("[broker]\nport = abc\n", "broker", "port"),
        ("[broker]\nheartbeat = -1\n", "broker", "heartbeat"),
        ("[broker]\nlogin_method = KERBEROS\n", "broker", "login_method"),
        ("[DEFAULT]\nexecutor_thread_pool_size = 0\n", "DEFAULT", "executor_thread_pool_size"),
        ("[DEFAULT]\nworkers = 0\n", "DEFAULT", "workers"),
    ],
)
def test_bad_static_values(make_conf: MakeConf, text: str, group: str, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_conf(text)
    assert (info.value.group, info.value.option) == (group, option)


def test_missing_config_file_is_a_config_error(tmp_path: object) -> None:
    with pytest.raises(ConfigError) as info:
        conffile.prepare(["--config-file", "/nonexistent/rpcworker.conf"], default_config_files=[])
    assert "/nonexistent/rpcworker.conf" in str(info.value)


def test_environment_overrides(make_conf: MakeConf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_BROKER__HOSTNAME", "rabbit.example.org")
    conf = make_conf("[broker]\nhostname = localhost\n")
    assert conf.broker.hostname == "rabbit.example.org"


def test_bindings_sharing_an_exchange_must_agree(make_conf: MakeConf) -> None:
    exc = error_of(
        make_conf,
        """
        [DEFAULT]
        bindings = a, b
        [binding:a]
        type = direct
        handler = echo
        exchange = shared
        routing_key = k
        [binding:b]
        type = direct
        handler = echo
        exchange = shared
        routing_key = k2
        durable = false
        """,
    )
    assert (exc.group, exc.option) == ("binding:b", "durable") and "'a'" in exc.reason
    exc = error_of(
        make_conf,
        """
        [DEFAULT]
        bindings = r, t
        [binding:r]
        type = rpc
        handler = echo
        exchange = openstack
        [binding:t]
        type = fanout
        handler = echo
        exchange = openstack
        durable = false
        """,
    )
    assert (exc.group, exc.option) == ("binding:t", "exchange")


def group(name: str, kind: str = "direct", **options: object) -> str:
    """A [binding:NAME] group on the echo handler (a direct one has routing key k)."""
    lines = [f"[binding:{name}]", f"type = {kind}", "handler = echo"]
    lines += ["routing_key = k"] if kind == "direct" else []
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def enabled(**groups: str) -> str:
    """The configuration enabling ``groups`` (name -> its group text), host h1."""
    return f"[DEFAULT]\nhost = h1\nbindings = {', '.join(groups)}\n" + "".join(groups.values())


def test_quorum_rpc_binding_is_oslo_s_rabbit_quorum_queue(make_conf: MakeConf) -> None:
    """queue_type = quorum: durable by default and oslo's x-* arguments, each only when
    its option is above 0 (as oslo's rabbit_quorum_* options)."""
    [b] = parse(
        make_conf,
        enabled(
            compute=group(
                "compute",
                "rpc",
                queue_type="quorum",
                delivery_limit=3,
                quorum_max_memory_bytes=1048576,
            )
        ),
    )
    assert b.quorum and b.durable and b.delivery_limit == 3
    assert b.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 3,
        "x-max-in-memory-bytes": 1048576,
    }
    assert b.work_queues == ("compute", "compute.h1")
    assert b.is_quorum_queue("compute.h1") and not b.is_quorum_queue("compute_fanout_x")


def test_queue_type_defaults_and_agreement(make_conf: MakeConf) -> None:
    q, c, a = parse(
        make_conf,
        enabled(
            q=group("q", queue_type="quorum"),
            c=group("c", queue_type="classic"),
            a=group(
                "a",
                "rpc",
                queue_type="quorum",
                queue_arguments="x-queue-type:quorum, x-delivery-limit:4",
            ),
        ),
    )
    assert q.quorum and q.durable and q.queue_arguments == {"x-queue-type": "quorum"}
    assert q.delivery_limit == 0
    assert not c.quorum and c.queue_arguments == {}
    # queue_arguments alone still makes a quorum queue, now durable by default
    assert a.quorum and a.durable and a.delivery_limit == 4


@pytest.mark.parametrize(
    "extra, option, words",
    [
        ("queue_type = quorum\ndurable = false", "durable", "always durable"),
        ("queue_type = classic\nqueue_arguments = x-queue-type:quorum", "queue_type", "disagrees"),
        ("queue_type = quorum\nqueue_arguments = x-queue-type:stream", "queue_type", "disagrees"),
        ("queue_type = lazy", "queue_type", "lazy"),
        ("delivery_limit = 3", "delivery_limit", "only for quorum"),
        ("queue_type = classic\ndelivery_limit = 3", "delivery_limit", "only for quorum"),
        ("quorum_max_memory_length = 10", "quorum_max_memory_length", "only for quorum"),
        ("quorum_max_memory_bytes = 10", "quorum_max_memory_bytes", "only for quorum"),
        ("queue_type = quorum\ndelivery_limit = -1", "delivery_limit", ""),
        (
            "queue_type = quorum\ndelivery_limit = 3\nqueue_arguments = x-delivery-limit:5",
            "delivery_limit",
            "disagrees",
        ),
        (
            "queue_type = quorum\nqueue_arguments = x-delivery-limit:many",
            "queue_arguments",
            "x-delivery-limit",
        ),
        ("queue_type = quorum\nauto_delete = true", "auto_delete", "quorum"),
    ],
)
def test_bad_quorum_options_name_the_option(
    make_conf: MakeConf, extra: str, option: str, words: str
) -> None:
    exc = error_of(make_conf, enabled(b=group("b") + extra + "\n"))
    assert (exc.group, exc.option) == ("binding:b", option)
    assert words in exc.reason


def test_quorum_fanout_needs_a_named_queue(make_conf: MakeConf) -> None:
    exc = error_of(make_conf, enabled(b=group("b", "fanout", queue_type="quorum")))
    assert (exc.group, exc.option) == ("binding:b", "exclusive")


def test_a_parking_lot_shared_by_quorum_and_classic_bindings_is_an_error(
    make_conf: MakeConf,
) -> None:
    exc = error_of(
        make_conf,
        enabled(
            a=group("a", dead_letter_queue="parked"),
            b=group("b", queue_type="quorum", dead_letter_queue="parked"),
        ),
    )
    assert (exc.group, exc.option) == ("binding:b", "dead_letter_queue")
    assert "'a'" in exc.reason and "classic" in exc.reason
