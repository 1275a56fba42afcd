"""Build the private ConfigOpts (never the global cfg.CONF) and set up logging."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging as std_logging
import os
import re
import stat
import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.config import opts
from rpcworker.errors import ConfigError, oneline

PROJECT = "rpcworker"

#: library loggers that are too chatty at INFO for a daemon
_DEFAULT_LOG_LEVELS = [
    "amqp=WARN",
    "kombu=WARN",
    "stevedore=WARN",
    "oslo_config=WARN",
    "oslo_messaging=WARN",
]


def version_string() -> str:
    """``rpcworker X.Y.Z``, from the installed distribution's metadata (what ``--version``
    prints, as every oslo service does through ``ConfigOpts(version=...)``)."""
    try:
        return f"{PROJECT} {importlib.metadata.version(PROJECT)}"
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return f"{PROJECT} (not installed)"


def new_conf(with_cli: bool = True) -> cfg.ConfigOpts:
    """A fresh ConfigOpts with every static rpcworker and oslo.log option registered."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    if with_cli:
        conf.register_cli_opts(opts.cli_opts)
    logging.register_options(conf)
    logging.set_defaults(default_log_levels=logging.get_default_log_levels() + _DEFAULT_LOG_LEVELS)
    return conf


def prepare(
    argv: Sequence[str] | None,
    *,
    with_cli: bool = True,
    default_config_files: list[str] | None = None,
) -> cfg.ConfigOpts:
    """Parse ``argv`` (without the program name) into a new ConfigOpts.

    Raises ConfigError for a value oslo.config refuses, naming group and option.
    """
    conf = new_conf(with_cli=with_cli)
    try:
        _parse(conf, list(argv or []), default_config_files)
    except cfg.ConfigFilesNotFoundError as exc:
        files = ", ".join(exc.config_files)
        raise ConfigError(None, "--config-file", f"cannot read {files}") from exc
    except cfg.ConfigFileParseError as exc:
        raise ConfigError(None, None, f"{exc.config_file}: {exc.msg}") from exc
    except (cfg.Error, ValueError) as exc:
        raise ConfigError(None, None, oneline(exc, with_type=False)) from exc
    check_values(conf, None, opts.default_opts)
    check_values(conf, None, _other_default_opts(conf))
    check_values(conf, opts.BROKER_GROUP, opts.broker_opts)
    check_values(conf, opts.METRICS_GROUP, opts.metrics_opts)
    check_values(conf, opts.OSLO_RABBIT_GROUP, opts.oslo_rabbit_opts)
    return conf


#: what oslo.config writes (then exits 1) for a command-line option's bad value, which
#: includes a value given in a config file for an option that is also a CLI flag (--debug)
_OSLO_CLI_VALUE_ERROR = re.compile(r"^argument --(\S+): Invalid (.+?) value: (.*)$")


def _parse(conf: cfg.ConfigOpts, argv: list[str], default_config_files: list[str] | None) -> None:
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            conf(
                args=argv,
                project=PROJECT,
                prog=PROJECT,
                version=version_string(),
                default_config_files=default_config_files,
                validate_default_values=True,
            )
    except SystemExit:
        text = captured.getvalue().strip()
        match = _OSLO_CLI_VALUE_ERROR.match(text)
        if match:
            dest, type_name, value = match.groups()
            raise ConfigError(
                "DEFAULT", dest, f"invalid value {value!r}: {type_name} expected"
            ) from None
        sys.stderr.write(captured.getvalue())  # argparse's usage error or --help
        raise
    sys.stderr.write(captured.getvalue())


def _other_default_opts(conf: cfg.ConfigOpts) -> list[cfg.Opt]:
    """[DEFAULT] options registered by others (oslo.log), checked like ours."""
    ours = {opt.dest for opt in opts.default_opts}
    found = []
    for name in conf:
        if name in ours:
            continue
        try:
            info = conf._get_opt_info(name)  # noqa: SLF001 - oslo.config has no public lookup
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, KeyError):
            continue  # a group, not an option
        found.append(info["opt"])
    return found


def check_values(conf: cfg.ConfigOpts, group: str | None, options: Sequence[cfg.Opt]) -> None:
    """Read every option of ``group`` once so that a bad value fails here, named."""
    for opt in options:
        try:
            getattr(conf[group] if group else conf, opt.dest)
        except (cfg.Error, ValueError) as exc:
            env = f"OS_{(group or 'DEFAULT').upper()}__{opt.dest.upper()}"
            source = f"environment variable {env}" if env in os.environ else None
            raise ConfigError(group or "DEFAULT", opt.name, _value_error(exc, source)) from exc


_OSLO_VALUE_ERROR = re.compile(
    r"^Value for option \S+ from LocationInfo\(.*?detail='(.*?)'\) "
    r"is not valid: (.*)$"
)


def _value_error(exc: BaseException, source: str | None = None) -> str:
    """oslo.config's "Value for option X from LocationInfo(...) is not valid: Y" -> "Y (in F)"."""
    text = oneline(exc, with_type=False)
    match = _OSLO_VALUE_ERROR.match(text)
    if match:
        path, reason = match.groups()
        source = source or path
        return f"invalid value: {reason}" + (f" (in {source})" if source else "")
    return text


def setup_logging(conf: cfg.ConfigOpts) -> None:
    """oslo.log set-up; raises ConfigError when a log destination cannot be used."""
    try:
        logging.setup(conf, PROJECT)
    except RuntimeError as exc:
        if conf.use_journal and "ystemd" in str(exc):
            raise ConfigError(
                "DEFAULT",
                "use_journal",
                "needs the systemd-python package (pip install "
                "'rpcworker[journal]'); without it, log to stderr, which "
                "systemd sends to the journal anyway",
            ) from exc
        raise ConfigError(
            "DEFAULT", None, f"logging set-up failed: {oneline(exc, with_type=False)}"
        ) from exc
    except OSError as exc:
        option = "log_file" if conf.log_file else None
        raise ConfigError(
            "DEFAULT", option, f"cannot open the log: {oneline(exc, with_type=False)}"
        ) from exc
    # py-amqp logs every heartbeat tick at DEBUG: keep that out even with --debug
    std_logging.getLogger("amqp.connection.Connection.heartbeat_tick").setLevel(std_logging.WARNING)
    if not conf.debug:
        std_logging.getLogger("amqp").setLevel(std_logging.WARNING)


def exposed_secrets(conf: cfg.ConfigOpts) -> list[str]:
    """Warnings for each config file that holds a broker password and that users other
    than its owner and group can read (or write)."""
    found: dict[str, str] = {}
    for name, group in (("password", opts.BROKER_GROUP), ("transport_url", None)):
        if name == "transport_url" and not _url_has_password(conf.transport_url or ""):
            continue
        if name == "password" and _only_default_credentials(conf):
            continue
        loc = conf.get_location(name, group)
        if loc is not None and loc.location == cfg.Locations.user and loc.detail:
            found.setdefault(loc.detail, f"[{group or 'DEFAULT'}] {name}")
    warnings = []
    for path, what in found.items():
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            warnings.append(
                f"config file {path} holds the broker password ({what}) and every user "
                f"can read it (mode {mode:04o}): chmod o-rw {path}, e.g. mode 0640 owned "
                "by root and the service's group"
            )
    return warnings


#: RabbitMQ lets its default user in from these only (loopback_users)
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def _only_default_credentials(conf: cfg.ConfigOpts) -> bool:
    """guest/guest on the loopback interface (the repository's example config): RabbitMQ's
    well-known default user, which it refuses from any other host, is no secret."""
    b = conf[opts.BROKER_GROUP]
    return (
        (b.userid, b.password) == ("guest", "guest")
        and b.hostname in _LOOPBACK
        and not conf.transport_url
    )


def _url_has_password(url: str) -> bool:
    netloc = url.partition("://")[2].split("/", 1)[0]
    return any(":" in creds.rpartition("@")[0] for creds in netloc.split(",") if "@" in creds)
