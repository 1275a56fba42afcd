from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kombu
import pytest
from kombu.transport import pyamqp
from oslo_config import cfg

from rpcworker.amqp import broker, transport
from rpcworker.errors import ConfigError

MakeConf = Callable[..., cfg.ConfigOpts]


def test_broker_section(make_conf: MakeConf) -> None:
    conf = make_conf("""
        [broker]
        hostname = rabbit1
        port = 5673
        userid = nova
        password = s3cr:t/@x
        virtual_host = /nova
        heartbeat = 30
        """)
    s = broker.settings(conf)
    [h] = s.hosts
    assert (h.hostname, h.port, h.userid, h.password, h.virtual_host) == (
        "rabbit1",
        5673,
        "nova",
        "s3cr:t/@x",
        "/nova",
    )
    conn = broker.connection(conf, s)
    assert conn.hostname == "rabbit1" and conn.port == 5673
    assert conn.userid == "nova" and conn.password == "s3cr:t/@x"
    assert conn.virtual_host == "/nova" and conn.heartbeat == 30
    assert "s3cr" not in broker.describe(s) and "s3cr" not in conn.as_uri()


def test_transport_url_failover_and_overrides(make_conf: MakeConf) -> None:
    conf = make_conf("""
        [DEFAULT]
        transport_url = rabbit://u1:p%40ss@h1:5672,u2:pw2@[::1]:5673/vh?heartbeat=15&ssl=false
        [broker]
        failover_strategy = shuffle
        """)
    s = broker.settings(conf)
    assert [(h.hostname, h.port, h.userid, h.password, h.virtual_host) for h in s.hosts] == [
        ("h1", 5672, "u1", "p@ss", "vh"),
        ("::1", 5673, "u2", "pw2", "vh"),
    ]
    assert s.options["heartbeat"] == 15 and s.ssl is False
    conn = broker.connection(conf, s)
    assert conn.password == "p@ss" and conn.virtual_host == "vh"
    assert len(conn.alt) == 2 and conn.failover_strategy.__name__ == "shufflecycle"
    assert "p%40ss" not in broker.describe(s) and "p@ss" not in broker.describe(s)


@pytest.mark.parametrize(
    "url, vhost",
    [
        ("rabbit://h1", "/"),
        ("rabbit://h1/", "/"),
        ("rabbit://h1//", "/"),
        ("rabbit://h1/%2F", "/"),
        ("rabbit://h1/nova", "nova"),
    ],
)
def test_transport_url_vhost(make_conf: MakeConf, url: str, vhost: str) -> None:
    conf = make_conf(f"[DEFAULT]\ntransport_url = {url}\n")
    assert broker.settings(conf).hosts[0].virtual_host == vhost


def test_transport_url_defaults_credentials_from_broker(make_conf: MakeConf) -> None:
    conf = make_conf("""
        [DEFAULT]
        transport_url = rabbit://h1,h2:5700/
        [broker]
        userid = svc
        password = pw
        """)
    hosts = broker.settings(conf).hosts
    assert [(h.userid, h.password, h.port) for h in hosts] == [
        ("svc", "pw", 5672),
        ("svc", "pw", 5700),
    ]


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://h1/", "scheme"),
        ("rabbit://h1:99999/", "range"),
        ("rabbit://h1:x/", "port"),
        ("rabbit://h1/?nosuch=1", "nosuch"),
        ("rabbit://h1/?heartbeat=abc", "heartbeat"),
    ],
)
def test_bad_transport_url(make_conf: MakeConf, url: str, words: str) -> None:
    conf = make_conf(f"[DEFAULT]\ntransport_url = {url}\n")
    with pytest.raises(ConfigError) as info:
        broker.settings(conf)
    assert info.value.option == "transport_url" and words in str(info.value)


@pytest.fixture
def pem(tmp_path: Path) -> Callable[[str], str]:
    """pem(name) -> the path of an (empty) file: settings() only checks TLS files exist."""

    def make(name: str) -> str:
        path = tmp_path / name
        path.write_text("")
        return str(path)

    return make


def test_tls_options(make_conf: MakeConf, pem: Callable[[str], str]) -> None:
    ca, cert, key = pem("ca.pem"), pem("cert.pem"), pem("key.pem")
    conf = make_conf(f"""
        [broker]
        ssl = true
        ssl_ca_file = {ca}
        ssl_cert_file = {cert}
        ssl_key_file = {key}
        """)
    opts = broker.ssl_options(broker.settings(conf))
    assert opts == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": ca,
        "certfile": cert,
        "keyfile": key,
        "server_hostname": None,
    }
    amqps = make_conf("[DEFAULT]\ntransport_url = amqps://h1:5671/\n")
    assert broker.settings(amqps).ssl is True
    no_verify = make_conf("[broker]\nssl = true\nssl_verify_hostname = false\n")
    assert "server_hostname" not in broker.ssl_options(broker.settings(no_verify))  # type: ignore[operator]


@pytest.mark.parametrize(
    "url, ports",
    [
        ("amqps://h1,h2:5700/", [5671, 5700]),
        ("rabbits://h1/", [5671]),
        ("rabbit://h1/?ssl=true", [5672]),
    ],
)
def test_tls_url_default_port(make_conf: MakeConf, url: str, ports: list[int]) -> None:
    s = broker.settings(make_conf(f"[DEFAULT]\ntransport_url = {url}\n"))
    assert s.ssl is True and [h.port for h in s.hosts] == ports


@pytest.mark.parametrize(
    "broker_lines, option, words",
    [
        ("ssl = true\nssl_ca_file = /nonexistent/ca.pem", "ssl_ca_file", "no such file"),
        ("ssl = true\nssl_cert_file = /nonexistent/c.pem", "ssl_cert_file", "no such file"),
        ("ssl = true\nssl_key_file = {key}", "ssl_key_file", "without ssl_cert_file"),
        ("login_method = EXTERNAL\nssl_cert_file = {cert}", "login_method", "ssl = true"),
        ("login_method = EXTERNAL\nssl = true", "login_method", "ssl_cert_file"),
    ],
)
def test_tls_config_errors(
    make_conf: MakeConf, pem: Callable[[str], str], broker_lines: str, option: str, words: str
) -> None:
    lines = broker_lines.format(key=pem("key.pem"), cert=pem("cert.pem"))
    conf = make_conf("[broker]\n" + lines + "\n")
    with pytest.raises(ConfigError) as info:
        broker.settings(conf)
    assert info.value.option == option and words in str(info.value)


def test_tls_files_ignored_without_tls(make_conf: MakeConf) -> None:
    conf = make_conf("[broker]\nssl_ca_file = /nonexistent/ca.pem\n")
    assert broker.ssl_options(broker.settings(conf)) is False


def test_external_login(make_conf: MakeConf, pem: Callable[[str], str]) -> None:
    conf = make_conf(f"""
        [DEFAULT]
        transport_url = amqps://broker.example.org/
        [broker]
        login_method = EXTERNAL
        password =
        ssl_cert_file = {pem("client.pem")}
        ssl_key_file = {pem("client.key")}
        """)
    s = broker.settings(conf)
    conn = broker.connection(conf, s)
    assert broker.describe(s).endswith("(TLS, EXTERNAL login)")
    assert conn.login_method == "EXTERNAL" and conn.ssl is not None
    assert conn.ssl["certfile"].endswith("client.pem")


class FakeAMQP:
    """Stands in for py-amqp's Connection: records what kombu asks for; the hosts on
    port 5699 refuse the connection."""

    attempts: list[tuple[str, str | None]] = []
    connected = True

    def __init__(self, host: str, ssl: Any = None, **kwargs: Any) -> None:
        self.host = host
        FakeAMQP.attempts.append((host, ssl.get("server_hostname") if ssl else None))

    def connect(self) -> None:
        if self.host.endswith(":5699"):
            raise ConnectionRefusedError(111, "Connection refused")

    def close(self) -> None:
        pass

    def collect(self) -> None:
        pass


@pytest.fixture
def fake_amqp(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    FakeAMQP.attempts = []
    monkeypatch.setattr(pyamqp.Transport, "Connection", FakeAMQP)
    return FakeAMQP.attempts


def _tls_conf(make_conf: MakeConf, url: str, *extra: str) -> cfg.ConfigOpts:
    return make_conf("\n".join(["[DEFAULT]", f"transport_url = {url}", *extra]) + "\n")


def test_each_failover_host_is_verified_against_its_own_name(
    make_conf: MakeConf, fake_amqp: list[tuple[str, str | None]]
) -> None:
    """Stock kombu fills server_hostname in place from the first host (after turning
    localhost into 127.0.0.1) and keeps it for the next hosts."""
    conf = _tls_conf(make_conf, "amqps://u:p@127.0.0.1:5699,u:p@localhost:5681,u:p@b.test:5699/")
    conn = broker.connection(conf)
    assert isinstance(conn.ssl, dict)
    template = dict(conn.ssl)
    work = conn.clone()  # as the consumer does for every session
    errors: list[str] = []
    work.ensure_connection(
        max_retries=3,
        interval_start=0,
        interval_step=0,
        errback=lambda exc, interval: errors.append(transport.attempted(exc, conn)),
    )
    assert fake_amqp == [("127.0.0.1:5699", "127.0.0.1"), ("127.0.0.1:5681", "localhost")]
    assert errors == ["amqp://u:**@127.0.0.1:5699//"]
    assert conn.ssl == template  # the template is never filled in
    # next session: a clone of the template starts again at the first host
    fake_amqp.clear()
    again = conn.clone()
    again.ensure_connection(max_retries=3, interval_start=0, interval_step=0)
    assert fake_amqp == [("127.0.0.1:5699", "127.0.0.1"), ("127.0.0.1:5681", "localhost")]
    # all hosts down: each is tried with its own name, and every error names its host
    fake_amqp.clear()
    down = broker.connection(_tls_conf(make_conf, "amqps://u:p@localhost:5699,u:p@b.test:5699/"))
    errors.clear()
    with pytest.raises(kombu.exceptions.OperationalError):
        down.clone().ensure_connection(
            max_retries=3,
            interval_start=0,
            interval_step=0,
            errback=lambda exc, interval: errors.append(transport.attempted(exc, down)),
        )
    assert [name for _, name in fake_amqp] == ["localhost", "b.test"] * 2
    assert errors[:2] == ["amqp://u:**@localhost:5699//", "amqp://u:**@b.test:5699//"]


def test_single_localhost_is_verified_as_localhost(
    make_conf: MakeConf, fake_amqp: list[tuple[str, str | None]]
) -> None:
    """py-amqp connects to 127.0.0.1, but the certificate must match "localhost"."""
    conf = make_conf("[broker]\nhostname = localhost\nport = 5699\nssl = true\n")
    conn = broker.connection(conf).clone()
    with pytest.raises(kombu.exceptions.OperationalError):
        conn.ensure_connection(max_retries=2, interval_start=0, interval_step=0)
    assert fake_amqp == [("127.0.0.1:5699", "localhost")] * 3


def test_no_hostname_verification(
    make_conf: MakeConf, fake_amqp: list[tuple[str, str | None]]
) -> None:
    conf = make_conf("[broker]\nhostname = b.test\nssl = true\nssl_verify_hostname = false\n")
    conn = broker.connection(conf)
    conn.clone().ensure_connection(max_retries=1)
    assert fake_amqp == [("b.test:5672", None)]
    assert isinstance(conn.ssl, dict) and "server_hostname" not in conn.ssl


def test_plain_connection_unchanged(
    make_conf: MakeConf, fake_amqp: list[tuple[str, str | None]]
) -> None:
    conn = broker.connection(make_conf("[broker]\nhostname = b.test\n"))
    conn.clone().ensure_connection(max_retries=1)
    assert conn.ssl is False and fake_amqp == [("b.test:5672", None)]


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message} (_ssl.c:1006)"
    )
    exc.verify_code = code
    return exc


def _ssl_error(cls: type[ssl.SSLError], reason: str, text: str) -> ssl.SSLError:
    exc = cls(1, f"[SSL: {reason}] {text} (_ssl.c:1006)")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    "exc, words",
    [
        (
            _verify_error(19, "self-signed certificate in certificate chain"),
            ["certificate verify failed", "not signed by a trusted CA", "ssl_ca_file"],
        ),
        (_verify_error(20, "unable to get local issuer certificate"), ["ssl_ca_file"]),
        (
            _verify_error(64, "IP address mismatch, certificate is not valid for '127.0.0.1'."),
            ["IP address mismatch", "not valid for the host name", "ssl_verify_hostname = false"],
        ),
        (
            _verify_error(62, "Hostname mismatch, certificate is not valid for 'b.test'."),
            ["Hostname mismatch", "ssl_verify_hostname"],
        ),
        (_verify_error(10, "certificate has expired"), ["certificate has expired", "refused"]),
        (
            _ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER", "wrong version number"),
            ["does not speak TLS", "5671"],
        ),
        (
            _ssl_error(ssl.SSLError, "TLSV1_ALERT_UNKNOWN_CA", "tlsv1 alert unknown ca"),
            ["refused the client certificate", "ssl_cert_file"],
        ),
        (
            ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"),
            ["during the handshake"],
        ),
    ],
)
def test_explain_tls_errors(exc: BaseException, words: list[str]) -> None:
    line = broker.explain(exc)
    assert line.startswith(type(exc).__name__ + ": ") and "\n" not in line
    for w in words:
        assert w in line


def test_explain_looks_through_kombu_wrapping() -> None:
    try:
        try:
            raise _verify_error(19, "self-signed certificate in certificate chain")
        except ssl.SSLError as exc:
            raise kombu.exceptions.OperationalError(str(exc)) from exc
    except kombu.exceptions.OperationalError as wrapped:
        assert "ssl_ca_file" in broker.explain(wrapped)


def test_explain_other_errors_unchanged() -> None:
    assert broker.explain(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert broker.explain(TimeoutError()) == "TimeoutError"
    assert transport.attempted(TimeoutError(), kombu.Connection("amqp://u:p@h9//")) == (
        "amqp://u:**@h9:5672//"
    )


def _failover_conn(make_conf: MakeConf, strategy: str) -> transport.Connection:
    conf = make_conf(f"""
        [DEFAULT]
        transport_url = rabbit://u:p@h1:5672,u:p@h2:5673,u2:p2@h3:5674/
        [broker]
        failover_strategy = {strategy}
        """)
    conn = broker.connection(conf)
    assert isinstance(conn, transport.Connection)
    return conn


def _next_hosts(conn: kombu.Connection, n: int) -> list[str]:
    """The hosts of the first attempt and of the next ``n`` failovers."""
    seen = [f"{conn.hostname}:{conn.port}"]
    for _ in range(n):
        conn.maybe_switch_next()
        seen.append(f"{conn.hostname}:{conn.port}")
    return seen


def test_round_robin_reconnects_start_after_the_lost_host(make_conf: MakeConf) -> None:
    conn = _failover_conn(make_conf, "round-robin")
    h1, h2, h3 = conn.alt
    assert conn.current == h1
    # the first session: the configured order
    assert _next_hosts(conn.failover_clone(None), 4) == [
        "h1:5672",
        "h2:5673",
        "h3:5674",
        "h1:5672",
        "h2:5673",
    ]
    # the session on h2 was lost: h3 first, h2 last, each once per round
    again = conn.failover_clone(h2)
    assert again.current == h3 and again.userid == "u2" and again.password == "p2"
    assert _next_hosts(again, 3) == ["h3:5674", "h1:5672", "h2:5673", "h3:5674"]
    assert _next_hosts(conn.failover_clone(h3), 2) == ["h1:5672", "h2:5673", "h3:5674"]
    # switch() keeps track of where a connection is
    again.maybe_switch_next()
    assert again.current == h1 and again.userid == "u"


def test_shuffle_never_starts_on_the_lost_host_and_spreads_first_starts(
    make_conf: MakeConf,
) -> None:
    conn = _failover_conn(make_conf, "shuffle")
    h1, _, _ = conn.alt
    firsts = {conn.failover_clone(h1).hostname for _ in range(60)}
    assert firsts == {"h2", "h3"}
    assert {conn.failover_clone(None).hostname for _ in range(60)} == {"h1", "h2", "h3"}


def test_single_host_reconnects_to_it(make_conf: MakeConf) -> None:
    conf = make_conf("""
        [broker]
        hostname = h9
        """)
    conn = broker.connection(conf)
    assert conn.failover_clone("whatever").hostname == "h9"
