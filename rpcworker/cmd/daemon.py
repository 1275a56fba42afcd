"""``rpcworker``: the daemon, plus --check-config and --list-handlers."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.amqp import broker, brokercheck, topology
from rpcworker.config import conffile, plugins
from rpcworker.daemon import service, supervisor
from rpcworker.errors import ConfigError, PluginError

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BROKER_CONFLICT = 1  # --check-config --broker: a declaration would be refused
EXIT_BROKER_UNREACHABLE = 4  # --check-config --broker: no connection to the broker


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        conf = conffile.prepare(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    if conf.list_handlers:
        return list_handlers()
    try:
        if conf.check_config:
            return check_config(conf)
        conffile.setup_logging(conf)
        for warning in conffile.exposed_secrets(conf):
            LOG.warning("%s", warning)
        if conf.workers > 1:
            service.validate(conf)  # fail fast, before forking
        else:
            worker = service.build(conf)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    except PluginError as exc:
        return _fail(f"plugin error: {exc}")
    if conf.workers > 1:
        try:
            return supervisor.run(conf)
        except ConfigError as exc:  # [metrics] listen: the port is taken
            return _fail(f"configuration error: {exc}")
    try:
        return service.run(conf, worker)
    except ConfigError as exc:  # the broker refuses what the configuration declares
        LOG.error("rpcworker stops: %s", exc)
        return _fail(f"configuration error: {exc}")


def _fail(message: str) -> int:
    print(f"rpcworker: {message}", file=sys.stderr)
    return EXIT_CONFIG


def list_handlers() -> int:
    infos = plugins.list_handlers()
    if not infos:
        print(f"no handler plugins installed (entry point group {plugins.NAMESPACE})")
        return EXIT_OK
    width = max(len(i.name) for i in infos)
    for info in infos:
        print(f"{info.name:<{width}}  {info.target}  {info.summary}".rstrip())
        if info.summary.startswith("(cannot be imported"):
            continue
        methods = (
            "(any public name: decided by the handler at run time)"
            if info.methods is None
            else ", ".join(info.methods) or "(none)"
        )
        print(f"{'':<{width}}    target: namespace {info.namespace}, version {info.version}")
        print(f"{'':<{width}}    methods: {methods}")
        if info.priorities:
            print(f"{'':<{width}}    notification priorities: {', '.join(info.priorities)}")
    return EXIT_OK


def check_config(conf: cfg.ConfigOpts) -> int:
    """Validate everything that can be checked without the broker and print the plan."""
    parsed, _, settings = service.validate(conf)
    for warning in conffile.exposed_secrets(conf):
        print(f"warning: {warning}")
    print(f"broker: {broker.describe(settings)}")
    for b in parsed:
        for line in topology.describe(topology.build(b, instance_id="<per-process id>")):
            print(line)
    print("configuration OK")
    if not conf.check_broker:
        return EXIT_OK
    if settings.folder is not None:
        print(
            "rpcworker: --broker: there is no broker to check with a filesystem:// transport_url",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    result = brokercheck.check(parsed, settings, broker.connection(conf, settings))
    if result.unreachable:
        print(f"rpcworker: broker unreachable: {result.unreachable}", file=sys.stderr)
        return EXIT_BROKER_UNREACHABLE
    for line in result.lines():
        print(line)
    return EXIT_BROKER_CONFLICT if result.conflicts else EXIT_OK
