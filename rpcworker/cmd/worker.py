"""``rpcworker``: the daemon, plus --check-config and --list-handlers."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker import broker, config, plugins, service, supervisor, topology
from rpcworker.errors import ConfigError, PluginError

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        conf = config.prepare(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    if conf.list_handlers:
        return list_handlers()
    try:
        if conf.check_config:
            return check_config(conf)
        config.setup_logging(conf)
        for warning in config.exposed_secrets(conf):
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
        return supervisor.run(conf)
    return service.run(conf, worker)


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
    return EXIT_OK


def check_config(conf: cfg.ConfigOpts) -> int:
    """Validate everything that can be checked without the broker and print the plan."""
    parsed, _, settings = service.validate(conf)
    for warning in config.exposed_secrets(conf):
        print(f"warning: {warning}")
    print(f"broker: {broker.describe(settings)}")
    for b in parsed:
        for line in topology.describe(topology.build(b, instance_id="<per-process id>")):
            print(line)
    print("configuration OK")
    return EXIT_OK
