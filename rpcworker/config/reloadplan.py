"""SIGHUP: re-read the configuration and work out what changed.

Log levels follow ``debug`` (oslo.log's mutate hook); bindings and their handlers
are re-read. Options outside the bindings (broker, thread pool, ...) need a
restart. A configuration that does not validate is refused as a whole: the
worker goes on with what it had. The worker asks here (``reread``) and hands the plan to
the engine (``engine.rebinding``), which never reads the configuration itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.config import bindingconf, plugins
from rpcworker.config.bindingconf import Binding
from rpcworker.errors import ConfigError, PluginError

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    bindings: list[Binding]
    added: list[str]
    removed: list[str]
    changed: list[str]
    #: handler instances for handler names not loaded before
    new_handlers: dict[str, Any]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def plan(conf: cfg.ConfigOpts, current: Sequence[Binding], handlers: dict[str, Any]) -> Plan:
    """Re-read the config files; raises ConfigError/PluginError (nothing is changed then)."""
    changes = conf.mutate_config_files()
    LOG.debug(
        "options changed by the reload: %s",
        ", ".join(f"[{group or 'DEFAULT'}] {name}" for group, name in changes),
    )
    new = bindingconf.parse(conf)
    missing = {b.handler for b in new if b.handler not in handlers}
    loaded = plugins.load(conf, [b for b in new if b.handler in missing]) if missing else {}
    new = plugins.resolve_priorities(new, {**handlers, **loaded})
    old = {b.name: b for b in current}
    fresh = {b.name: b for b in new}
    return Plan(
        bindings=new,
        added=[n for n in fresh if n not in old],
        removed=[n for n in old if n not in fresh],
        changed=[n for n in fresh if n in old and fresh[n] != old[n]],
        new_handlers=loaded,
    )


def reread(
    conf: cfg.ConfigOpts, current: Sequence[Binding], handlers: dict[str, Any]
) -> Plan | None:
    """SIGHUP: the plan for the configuration files as they are now; None when the new
    configuration is refused (logged; nothing changes then)."""
    LOG.info("SIGHUP: re-reading the configuration")
    try:
        return plan(conf, current, handlers)
    except (ConfigError, PluginError) as exc:
        LOG.error("SIGHUP: the new configuration is refused, nothing changed: %s", exc)
    except Exception:  # a reload must never take the worker down
        LOG.exception("SIGHUP: reading the new configuration failed, nothing changed")
    return None
