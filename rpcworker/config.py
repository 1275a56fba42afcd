"""Build the private ConfigOpts (never the global cfg.CONF) and set up logging."""

from __future__ import annotations

import logging as std_logging
import os
import re
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker import opts
from rpcworker.errors import ConfigError

PROJECT = "rpcworker"
LOG = logging.getLogger(__name__)

#: library loggers that are too chatty at INFO for a daemon
_DEFAULT_LOG_LEVELS = [
    "amqp=WARN",
    "kombu=WARN",
    "stevedore=WARN",
    "oslo_config=WARN",
    "oslo_messaging=WARN",
]


def new_conf(with_cli: bool = True) -> cfg.ConfigOpts:
    """A fresh ConfigOpts with every static rpcworker and oslo.log option registered."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    if with_cli:
        conf.register_cli_opts(opts.cli_opts)
    logging.register_options(conf)
    logging.set_defaults(
        default_log_levels=logging.get_default_log_levels() + _DEFAULT_LOG_LEVELS
    )
    return conf


def prepare(argv: Sequence[str] | None, *, with_cli: bool = True,
            default_config_files: list[str] | None = None) -> cfg.ConfigOpts:
    """Parse ``argv`` (without the program name) into a new ConfigOpts.

    Raises ConfigError for a value oslo.config refuses, naming group and option.
    """
    conf = new_conf(with_cli=with_cli)
    try:
        conf(
            args=list(argv or []),
            project=PROJECT,
            prog=PROJECT,
            default_config_files=default_config_files,
            validate_default_values=True,
        )
    except cfg.ConfigFilesNotFoundError as exc:
        files = ", ".join(exc.config_files)
        raise ConfigError(None, "--config-file", f"cannot read {files}") from exc
    except cfg.ConfigFileParseError as exc:
        raise ConfigError(None, None, f"{exc.config_file}: {exc.msg}") from exc
    except (cfg.Error, ValueError) as exc:
        raise ConfigError(None, None, one_line(exc)) from exc
    check_values(conf, None, opts.default_opts)
    check_values(conf, opts.BROKER_GROUP, opts.broker_opts)
    return conf


def check_values(conf: cfg.ConfigOpts, group: str | None, options: Sequence[cfg.Opt]) -> None:
    """Read every option of ``group`` once so that a bad value fails here, named."""
    for opt in options:
        try:
            getattr(conf[group] if group else conf, opt.dest)
        except (cfg.Error, ValueError) as exc:
            env = f"OS_{(group or 'DEFAULT').upper()}__{opt.dest.upper()}"
            source = f"environment variable {env}" if env in os.environ else None
            raise ConfigError(group or "DEFAULT", opt.name, _value_error(exc, source)) from exc


_OSLO_VALUE_ERROR = re.compile(r"^Value for option \S+ from LocationInfo\(.*?detail='(.*?)'\) "
                               r"is not valid: (.*)$")


def _value_error(exc: BaseException, source: str | None = None) -> str:
    """oslo.config's "Value for option X from LocationInfo(...) is not valid: Y" -> "Y (in F)"."""
    text = one_line(exc)
    match = _OSLO_VALUE_ERROR.match(text)
    if match:
        path, reason = match.groups()
        source = source or path
        return f"invalid value: {reason}" + (f" (in {source})" if source else "")
    return text


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def setup_logging(conf: cfg.ConfigOpts) -> None:
    """oslo.log set-up; raises ConfigError when a log destination cannot be used."""
    try:
        logging.setup(conf, PROJECT)
    except RuntimeError as exc:
        if conf.use_journal and "ystemd" in str(exc):
            raise ConfigError("DEFAULT", "use_journal",
                              "needs the systemd-python package (pip install "
                              "'rpcworker[journal]'); without it, log to stderr, which "
                              "systemd sends to the journal anyway") from exc
        raise ConfigError("DEFAULT", None, f"logging set-up failed: {one_line(exc)}") from exc
    except OSError as exc:
        option = "log_file" if conf.log_file else None
        raise ConfigError("DEFAULT", option, f"cannot open the log: {one_line(exc)}") from exc
    # py-amqp logs every heartbeat tick at DEBUG: keep that out even with --debug
    std_logging.getLogger("amqp.connection.Connection.heartbeat_tick").setLevel(
        std_logging.WARNING)
    if not conf.debug:
        std_logging.getLogger("amqp").setLevel(std_logging.WARNING)
