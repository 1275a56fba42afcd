"""conf -> kombu.Connection: hosts, credentials, TLS, heartbeat, failover."""

from __future__ import annotations

import dataclasses
import os
import ssl as ssl_module
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import kombu
from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.amqp import transport
from rpcworker.config import opts
from rpcworker.errors import ConfigError, oneline

LOG = logging.getLogger(__name__)

_SCHEMES = {"rabbit": False, "amqp": False, "pyamqp": False, "amqps": True, "rabbits": True}
FILESYSTEM = "filesystem://"
PORT = 5672
TLS_PORT = 5671


@dataclasses.dataclass(frozen=True)
class Host:
    hostname: str
    port: int
    userid: str
    password: str
    virtual_host: str

    def url(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return (
            f"amqp://{quote(self.userid, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{self.port}/{quote(self.virtual_host, safe='')}"
        )

    def masked(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"amqp://{self.userid}:***@{host}:{self.port}/{quote(self.virtual_host, safe='')}"


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    hosts: tuple[Host, ...]
    ssl: bool
    options: dict[str, Any]
    #: ``filesystem:///path``: kombu's filesystem transport in that directory, no broker
    #: (development only; see README "Development without RabbitMQ")
    folder: str | None = None


def settings(conf: cfg.ConfigOpts) -> BrokerSettings:
    """Resolve [broker] and transport_url into hosts and options. Raises ConfigError."""
    b = conf[opts.BROKER_GROUP]
    overrides: dict[str, Any] = {}
    use_ssl = b.ssl
    if conf.transport_url and conf.transport_url.startswith(FILESYSTEM):
        values = {opt.dest: getattr(b, opt.dest) for opt in opts.broker_opts}
        return BrokerSettings(
            hosts=(), ssl=False, options=values, folder=_filesystem_folder(conf.transport_url)
        )
    if conf.transport_url:
        hosts, overrides, url_ssl = parse_transport_url(conf.transport_url, b)
        use_ssl = use_ssl or url_ssl
        if "ssl" in overrides:
            use_ssl = overrides.pop("ssl")
    else:
        hosts = (Host(b.hostname, b.port, b.userid, b.password or "", b.virtual_host),)
    values = {opt.dest: getattr(b, opt.dest) for opt in opts.broker_opts}
    values.update(overrides)
    s = BrokerSettings(hosts=hosts, ssl=use_ssl, options=values)
    _check_tls(s)
    return s


def _filesystem_folder(url: str) -> str:
    """The directory of ``filesystem:///path`` (absolute; query strings are refused)."""
    parts = urlsplit(url)
    if parts.netloc or parts.query or not parts.path.startswith("/"):
        raise ConfigError(
            "DEFAULT",
            "transport_url",
            "use filesystem:///ABSOLUTE/PATH (three slashes, no host, no query)",
        )
    return unquote(parts.path)


def _check_tls(s: BrokerSettings) -> None:
    """TLS files that cannot be read, and an EXTERNAL login without TLS or a client
    certificate, are configuration errors (not a connection retried forever)."""
    o = s.options
    if o["login_method"] == "EXTERNAL":
        if not s.ssl:
            raise ConfigError(
                opts.BROKER_GROUP,
                "login_method",
                "EXTERNAL logs in with the TLS client certificate: it needs "
                "ssl = true (or an amqps:// transport_url)",
            )
        if not o["ssl_cert_file"]:
            raise ConfigError(
                opts.BROKER_GROUP,
                "login_method",
                "EXTERNAL logs in with the TLS client certificate: set "
                "ssl_cert_file (and ssl_key_file)",
            )
    if not s.ssl:
        return
    if o["ssl_key_file"] and not o["ssl_cert_file"]:
        raise ConfigError(
            opts.BROKER_GROUP,
            "ssl_key_file",
            "set without ssl_cert_file (the certificate it belongs to)",
        )
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = o[name]
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            reason = "is not readable" if os.path.isfile(path) else "no such file"
            raise ConfigError(opts.BROKER_GROUP, name, f"{path}: {reason}")


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
    default_port = TLS_PORT if _SCHEMES[scheme] else PORT
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
        hosts.append(Host(host or b.hostname, port or default_port, user, password, vhost))
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


def _split_hostport(hostport: str, fail: Callable[[str], ConfigError]) -> tuple[str, int | None]:
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
    """The ``ssl`` argument of kombu.Connection (py-amqp's wrap_socket options).

    ``server_hostname: None`` asks for hostname verification: ``Connection`` replaces it
    with the name of each host it connects to.
    """
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
        sslopts["server_hostname"] = None
    return sslopts


def connection(conf: cfg.ConfigOpts, s: BrokerSettings | None = None) -> kombu.Connection:
    """A (not yet connected) Connection for the configured broker."""
    s = s or settings(conf)
    if s.folder is not None:
        return filesystem_connection(s.folder)
    o = s.options
    if o["insist"]:
        LOG.warning("[broker] insist = true is ignored: AMQP 0-9-1 has no insist flag")
    return transport.Connection(
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


def filesystem_connection(folder: str) -> kombu.Connection:
    """kombu's filesystem transport: messages are files in ``folder/queues``, exchange
    bindings in ``folder/exchanges`` (shared by every process using ``folder``)."""
    queues, exchanges = os.path.join(folder, "queues"), os.path.join(folder, "exchanges")
    try:
        for path in (queues, exchanges):
            os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "DEFAULT", "transport_url", f"cannot create {folder}: {exc.strerror}"
        ) from None
    return transport.filesystem_connection(queues, exchanges)


# OpenSSL X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code)
_UNTRUSTED = {2, 18, 19, 20, 21}
_NAME_MISMATCH = {62, 64}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}
_CLIENT_CERT_REFUSED = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED",
}


def explain(exc: BaseException) -> str:
    """One line for a failed connection attempt: the error, and what a TLS error means."""
    line = oneline(exc)
    hint = _tls_hint(exc)
    return f"{line} ({hint})" if hint else line


def _tls_hint(exc: BaseException) -> str | None:
    cause = exc.__cause__  # kombu re-raises connection errors as OperationalError
    if not isinstance(exc, ssl_module.SSLError) and isinstance(cause, ssl_module.SSLError):
        exc = cause
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return (
                "TLS: the broker's certificate is not valid for the host name "
                "connected to; connect with a name the certificate lists, or set "
                "[broker] ssl_verify_hostname = false"
            )
        if exc.verify_code in _UNTRUSTED:
            return (
                "TLS: the broker's certificate is not signed by a trusted CA; "
                "[broker] ssl_ca_file must hold the CA that signed it"
            )
        return "TLS: the broker's certificate was refused"
    if isinstance(exc, ssl_module.SSLEOFError):
        return (
            "TLS: the broker closed the connection during the handshake; it may "
            "refuse the client certificate ([broker] ssl_cert_file)"
        )
    if isinstance(exc, ssl_module.SSLError):
        reason = getattr(exc, "reason", None) or ""
        if reason in _NOT_TLS:
            return "TLS: the port does not speak TLS; use the broker's TLS port (usually 5671)"
        if reason in _CLIENT_CERT_REFUSED:
            return "TLS: the broker refused the client certificate ([broker] ssl_cert_file)"
        if reason == "KEY_VALUES_MISMATCH":
            return "TLS: [broker] ssl_key_file is not the key of ssl_cert_file"
    return None


def describe(s: BrokerSettings) -> str:
    """The broker hosts with passwords masked, for logs and --check-config."""
    if s.folder is not None:
        return f"{FILESYSTEM}{s.folder} (kombu filesystem transport: development only)"
    tls = ""
    if s.ssl:
        tls = " (TLS, EXTERNAL login)" if s.options["login_method"] == "EXTERNAL" else " (TLS)"
    return ", ".join(h.masked() for h in s.hosts) + tls
