"""conf -> kombu.Connection: hosts, credentials, TLS, heartbeat, failover."""

from __future__ import annotations

import dataclasses
import ssl as ssl_module
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import kombu
from oslo_config import cfg
from oslo_log import log as logging

from rpcworker import opts
from rpcworker.errors import ConfigError

LOG = logging.getLogger(__name__)

_SCHEMES = {"rabbit": False, "amqp": False, "pyamqp": False, "amqps": True, "rabbits": True}


@dataclasses.dataclass(frozen=True)
class Host:
    hostname: str
    port: int
    userid: str
    password: str
    virtual_host: str

    def url(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return (f"amqp://{quote(self.userid, safe='')}:{quote(self.password, safe='')}"
                f"@{host}:{self.port}/{quote(self.virtual_host, safe='')}")

    def masked(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"amqp://{self.userid}:***@{host}:{self.port}/{quote(self.virtual_host, safe='')}"


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    hosts: tuple[Host, ...]
    ssl: bool
    options: dict[str, Any]


def settings(conf: cfg.ConfigOpts) -> BrokerSettings:
    """Resolve [broker] and transport_url into hosts and options. Raises ConfigError."""
    b = conf[opts.BROKER_GROUP]
    overrides: dict[str, Any] = {}
    use_ssl = b.ssl
    if conf.transport_url:
        hosts, overrides, url_ssl = parse_transport_url(conf.transport_url, b)
        use_ssl = use_ssl or url_ssl
        if "ssl" in overrides:
            use_ssl = overrides.pop("ssl")
    else:
        hosts = (Host(b.hostname, b.port, b.userid, b.password or "", b.virtual_host),)
    values = {opt.dest: getattr(b, opt.dest) for opt in opts.broker_opts}
    values.update(overrides)
    return BrokerSettings(hosts=hosts, ssl=use_ssl, options=values)


def parse_transport_url(url: str, b: Any) -> tuple[tuple[Host, ...], dict[str, Any], bool]:
    """Parse ``rabbit://u:p@h1:5672,u:p@h2/vhost?opt=v`` (oslo.messaging's form)."""
    def fail(reason: str) -> ConfigError:
        return ConfigError("DEFAULT", "transport_url", reason)

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise fail(f"not a URL: {exc}") from None
    scheme = parts.scheme.split("+")[-1].lower()
    if scheme not in _SCHEMES:
        raise fail(f"unsupported scheme {parts.scheme!r} (use rabbit:// or amqps://)")
    # as oslo.messaging: no path, a trailing "/" and "//" all mean the vhost "/"
    vhost = "/" if parts.path in ("", "/", "//") else unquote(parts.path[1:])
    hosts = []
    for netloc in parts.netloc.split(","):
        netloc = netloc.strip()
        if not netloc:
            continue
        creds, _, hostport = netloc.rpartition("@")
        user, password = b.userid, b.password or ""
        if creds:
            u, sep, p = creds.partition(":")
            user = unquote(u)
            password = unquote(p) if sep else ""
        host, port = _split_hostport(hostport, fail)
        hosts.append(Host(host or b.hostname, port or 5672, user, password, vhost))
    if not hosts:
        hosts.append(Host(b.hostname, b.port, b.userid, b.password or "", vhost))
    overrides: dict[str, Any] = {}
    known = {opt.dest: opt for opt in opts.broker_opts}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known or key in ("hostname", "port", "userid", "password", "virtual_host"):
            raise fail(f"unknown query parameter {key!r}")
        try:
            overrides[key] = known[key].type(value)
        except ValueError as exc:
            raise fail(f"query parameter {key}: {exc}") from None
    return tuple(hosts), overrides, _SCHEMES[scheme]


def _split_hostport(hostport: str, fail: Any) -> tuple[str, int | None]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_s = hostport.partition(":")
    port = None
    if port_s:
        try:
            port = int(port_s)
        except ValueError:
            raise fail(f"bad port {port_s!r}") from None
        if not 0 < port < 65536:
            raise fail(f"port {port} out of range 1..65535")
    return host, port


def ssl_options(s: BrokerSettings) -> dict[str, Any] | bool:
    """The ``ssl`` argument of kombu.Connection (py-amqp's wrap_socket options)."""
    if not s.ssl:
        return False
    o = s.options
    sslopts: dict[str, Any] = {"cert_reqs": ssl_module.CERT_REQUIRED}
    if o["ssl_ca_file"]:
        sslopts["ca_certs"] = o["ssl_ca_file"]
    if o["ssl_cert_file"]:
        sslopts["certfile"] = o["ssl_cert_file"]
    if o["ssl_key_file"]:
        sslopts["keyfile"] = o["ssl_key_file"]
    if o["ssl_verify_hostname"]:
        sslopts["server_hostname"] = None  # kombu fills in the host being connected to
    return sslopts


def connection(conf: cfg.ConfigOpts, s: BrokerSettings | None = None) -> kombu.Connection:
    """A (not yet connected) kombu.Connection for the configured broker."""
    s = s or settings(conf)
    o = s.options
    if o["insist"]:
        LOG.warning("[broker] insist = true is ignored: AMQP 0-9-1 has no insist flag")
    return kombu.Connection(
        [h.url() for h in s.hosts],
        ssl=ssl_options(s),
        heartbeat=o["heartbeat"],
        connect_timeout=o["connect_timeout"],
        login_method=o["login_method"],
        failover_strategy=o["failover_strategy"],
        transport_options={
            "client_properties": {"connection_name": f"rpcworker:{conf.host}"},
        },
    )


def describe(s: BrokerSettings) -> str:
    """The broker hosts with passwords masked, for logs and --check-config."""
    return ", ".join(h.masked() for h in s.hosts) + (" (TLS)" if s.ssl else "")
