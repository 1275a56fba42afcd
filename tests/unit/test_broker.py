from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
from oslo_config import cfg

from rpcworker import broker
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
        "rabbit1", 5673, "nova", "s3cr:t/@x", "/nova")
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
        ("h1", 5672, "u1", "p@ss", "vh"), ("::1", 5673, "u2", "pw2", "vh")]
    assert s.options["heartbeat"] == 15 and s.ssl is False
    conn = broker.connection(conf, s)
    assert conn.password == "p@ss" and conn.virtual_host == "vh"
    assert len(conn.alt) == 2 and conn.failover_strategy.__name__ == "shufflecycle"
    assert "p%40ss" not in broker.describe(s) and "p@ss" not in broker.describe(s)


@pytest.mark.parametrize("url, vhost", [
    ("rabbit://h1", "/"), ("rabbit://h1/", "/"), ("rabbit://h1//", "/"),
    ("rabbit://h1/%2F", "/"), ("rabbit://h1/nova", "nova"),
])
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
    assert [(h.userid, h.password, h.port) for h in hosts] == [("svc", "pw", 5672),
                                                              ("svc", "pw", 5700)]


@pytest.mark.parametrize("url, words", [
    ("http://h1/", "scheme"),
    ("rabbit://h1:99999/", "range"),
    ("rabbit://h1:x/", "port"),
    ("rabbit://h1/?nosuch=1", "nosuch"),
    ("rabbit://h1/?heartbeat=abc", "heartbeat"),
])
def test_bad_transport_url(make_conf: MakeConf, url: str, words: str) -> None:
    conf = make_conf(f"[DEFAULT]\ntransport_url = {url}\n")
    with pytest.raises(ConfigError) as info:
        broker.settings(conf)
    assert info.value.option == "transport_url" and words in str(info.value)


def test_tls_options(make_conf: MakeConf) -> None:
    conf = make_conf("""
        [broker]
        ssl = true
        ssl_ca_file = /etc/ca.pem
        ssl_cert_file = /etc/cert.pem
        ssl_key_file = /etc/key.pem
        """)
    opts = broker.ssl_options(broker.settings(conf))
    assert opts == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": "/etc/ca.pem",
                    "certfile": "/etc/cert.pem", "keyfile": "/etc/key.pem",
                    "server_hostname": None}
    amqps = make_conf("[DEFAULT]\ntransport_url = amqps://h1:5671/\n")
    assert broker.settings(amqps).ssl is True
    no_verify = make_conf("[broker]\nssl = true\nssl_verify_hostname = false\n")
    assert "server_hostname" not in broker.ssl_options(broker.settings(no_verify))  # type: ignore[operator]
