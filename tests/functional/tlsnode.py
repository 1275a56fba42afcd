"""A second, throw-away RabbitMQ node with a TLS listener, for tests/functional/test_tls.py.

``TLSNode(directory).start()`` runs ``rabbit-tls@localhost`` beside the default node
(``rabbit@localhost`` on 5672, which it never touches): its own ports (TLS 5681, plain 5682,
distribution 25681, all on 127.0.0.1), its own rabbitmq.conf, enabled-plugins file (only
``rabbitmq_auth_mechanism_ssl``: no management listener), mnesia, log and pid files, all in
``directory`` (the machinery is tests/rabbitnode.py's RabbitNode). ``stop()`` stops the node
and removes the directory.

``make_certs(directory)`` writes the certificates with ``cryptography``: CA-1, a server
certificate from CA-1 valid for ``DNS:localhost`` only (so ``127.0.0.1`` is a host name
mismatch), CA-2 (an unrelated CA) and a client certificate from CA-1 whose CN is
``CLIENT_CN`` (the user of a SASL EXTERNAL login).
"""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.rabbitnode import NodeError, RabbitNode

NODE = "rabbit-tls@localhost"
TLS_PORT = 5681
PLAIN_PORT = 5682
DIST_PORT = 25681
CLIENT_CN = "rpcworker-tls-client"

# -- certificates ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path  # CA-1: signed the server and client certificates
    other_ca: Path  # CA-2: signed nothing the node presents
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclasses.dataclass(frozen=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rpcworker tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _issue(
    cn: str,
    issuer: _Issued | None,
    *,
    ca: bool = False,
    dns: tuple[str, ...] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> _Issued:
    """A P-256 key and its certificate, signed by ``issuer`` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return _Issued(builder.sign(signer, hashes.SHA256()), key)


def _write(directory: Path, stem: str, issued: _Issued) -> tuple[Path, Path]:
    cert = directory / f"{stem}.pem"
    key = directory / f"{stem}.key"
    cert.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca1 = _issue("rpcworker test CA-1", None, ca=True)
    ca2 = _issue("rpcworker test CA-2", None, ca=True)
    server = _issue(
        "rpcworker test broker", ca1, dns=("localhost",), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _issue(CLIENT_CN, ca1, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(directory, "ca1", ca1)
    other_ca_path, _ = _write(directory, "ca2", ca2)
    server_cert, server_key = _write(directory, "server", server)
    client_cert, client_key = _write(directory, "client", client)
    for stem in ("ca1", "ca2"):  # nothing needs the CA keys
        (directory / f"{stem}.key").unlink()
    return Certs(ca_path, other_ca_path, server_cert, server_key, client_cert, client_key)


# -- the node -------------------------------------------------------------------------


class TLSNode(RabbitNode):
    """``rabbit-tls@localhost`` in ``base`` (a directory this object owns and removes)."""

    def __init__(self, base: Path | None = None) -> None:
        base = base or Path(tempfile.mkdtemp(prefix="rpcworker-tlsnode-"))
        try:
            self.certs = make_certs(base / "certs")
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        c = self.certs
        super().__init__(
            NODE,
            PLAIN_PORT,
            DIST_PORT,
            base,
            [
                f"listeners.tcp.default = 127.0.0.1:{PLAIN_PORT}",
                f"listeners.ssl.default = 127.0.0.1:{TLS_PORT}",
                f"ssl_options.cacertfile = {c.ca}",
                f"ssl_options.certfile = {c.server_cert}",
                f"ssl_options.keyfile = {c.server_key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
                "loopback_users = none",
                "log.file.level = info",
            ],
            ["rabbitmq_auth_mechanism_ssl"],
            extra_ports=[TLS_PORT],
        )

    def add_user(self, name: str, password: str | None = None) -> None:
        """A user with all permissions on ``/`` (no usable password when None: EXTERNAL)."""
        for args in (
            ["add_user", name, password or secrets.token_hex(16)],
            ["set_permissions", "-p", "/", name, ".*", ".*", ".*"],
        ):
            result = self.ctl(*args)
            if result.returncode != 0:
                raise NodeError(f"rabbitmqctl {args[0]} {name}: {result.stderr.strip()}")
        if password is None:
            self.ctl("clear_password", name)

    def connections(self) -> list[tuple[str, str, bool]]:
        """(user, auth mechanism, TLS?) of every client connection."""
        out = self.ctl(
            "list_connections", "-q", "--no-table-headers", "user", "auth_mechanism", "ssl"
        ).stdout
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return [(r[0], r[1], r[2] == "true") for r in rows if len(r) == 3]

    def stop(self) -> None:
        """Stop the node (if it runs) and remove the directory. Never raises."""
        try:
            super().stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
