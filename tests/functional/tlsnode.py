"""A second, throw-away RabbitMQ node with a TLS listener, for tests/functional/test_tls.py.

``TLSNode(directory).start()`` runs ``rabbit-tls@localhost`` beside the default node
(``rabbit@localhost`` on 5672, which it never touches): its own ports (TLS 5681, plain 5682,
distribution 25681, all on 127.0.0.1), its own rabbitmq.conf, enabled-plugins file (only
``rabbitmq_auth_mechanism_ssl``: no management listener), mnesia, log and pid files, all in
``directory``, which belongs to the ``rabbitmq`` user. ``stop()`` stops the node and removes
the directory. The Debian ``rabbitmq-server``/``rabbitmqctl`` wrappers run the real scripts as
``rabbitmq`` (``su``, which keeps the RABBITMQ_* variables) with the shared Erlang cookie.

``make_certs(directory)`` writes the certificates with ``cryptography``: CA-1, a server
certificate from CA-1 valid for ``DNS:localhost`` only (so ``127.0.0.1`` is a host name
mismatch), CA-2 (an unrelated CA) and a client certificate from CA-1 whose CN is
``CLIENT_CN`` (the user of a SASL EXTERNAL login).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import wait_for

NODE = "rabbit-tls@localhost"
TLS_PORT = 5681
PLAIN_PORT = 5682
DIST_PORT = 25681
CLIENT_CN = "rpcworker-tls-client"
RABBITMQ_USER = "rabbitmq"
START_TIMEOUT = 90.0
PID_FILE_TIMEOUT = 20.0

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
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rpcworker tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(cn: str, issuer: _Issued | None, *, ca: bool = False,
           dns: tuple[str, ...] = (), usage: x509.ObjectIdentifier | None = None) -> _Issued:
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer.public_key()), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=not ca, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return _Issued(builder.sign(signer, hashes.SHA256()), key)


def _write(directory: Path, stem: str, issued: _Issued) -> tuple[Path, Path]:
    cert = directory / f"{stem}.pem"
    key = directory / f"{stem}.key"
    cert.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert, key


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca1 = _issue("rpcworker test CA-1", None, ca=True)
    ca2 = _issue("rpcworker test CA-2", None, ca=True)
    server = _issue("rpcworker test broker", ca1, dns=("localhost",),
                    usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _issue(CLIENT_CN, ca1, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(directory, "ca1", ca1)
    other_ca_path, _ = _write(directory, "ca2", ca2)
    server_cert, server_key = _write(directory, "server", server)
    client_cert, client_key = _write(directory, "client", client)
    for stem in ("ca1", "ca2"):  # nothing needs the CA keys
        (directory / f"{stem}.key").unlink()
    return Certs(ca_path, other_ca_path, server_cert, server_key, client_cert, client_key)


# -- the node -------------------------------------------------------------------------


class NodeError(RuntimeError):
    """The TLS node could not be started (the message says why, with its log tail)."""


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: it exists
    return True


def _run(args: list[str], env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a RabbitMQ command line. Its own process group: on timeout the whole group
    goes (the Debian wrappers leave the real command in a child of `su`)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(args, 124, out, f"timed out after {timeout:.0f} s")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class TLSNode:
    """``rabbit-tls@localhost`` in ``base`` (a directory this object owns and removes)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="rpcworker-tlsnode-"))
        try:
            self.certs = make_certs(self.base / "certs")
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.pid_file = self.base / "rabbit-tls.pid"
        self.log_base = self.base / "log"
        self.started = False

    # -- files --------------------------------------------------------------------------

    def _config(self) -> str:
        c = self.certs
        return "\n".join([
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
            "",
        ])

    def env(self) -> dict[str, str]:
        """The environment of ``rabbitmq-server``: every path and port of this node."""
        b = self.base
        return dict(
            os.environ,
            RABBITMQ_NODENAME=NODE,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(PLAIN_PORT),
            RABBITMQ_DIST_PORT=str(DIST_PORT),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_base),
            RABBITMQ_PID_FILE=str(self.pid_file),
        )

    def _write_files(self) -> None:
        b = self.base
        (b / "rabbitmq.conf").write_text(self._config())
        (b / "enabled_plugins").write_text("[rabbitmq_auth_mechanism_ssl].\n")
        # instead of /etc/rabbitmq/rabbitmq-env.conf, which names the default node
        (b / "rabbitmq-env.conf").write_text(
            f"NODENAME={NODE}\nERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n')
        for sub in ("mnesia", "log"):
            (b / sub).mkdir(exist_ok=True)
        self._give_to_rabbitmq()

    def _give_to_rabbitmq(self) -> None:
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(RABBITMQ_USER)
        os.chmod(self.base, 0o755)
        for root, dirs, files in os.walk(self.base):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.chown(self.base, user.pw_uid, user.pw_gid)

    # -- control ------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n rabbit-tls@localhost ARGS``."""
        return _run(["rabbitmqctl", "-n", NODE, *args], timeout=timeout)

    def start(self, timeout: float = START_TIMEOUT) -> TLSNode:
        """Start the node and wait for it; on any failure clean up and raise NodeError."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise NodeError("rabbitmq-server/rabbitmqctl are not on PATH")
        if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != RABBITMQ_USER:
            raise NodeError("starting a second RabbitMQ node needs root (or the rabbitmq user)")
        busy = [p for p in (TLS_PORT, PLAIN_PORT, DIST_PORT) if _port_in_use(p)]
        if busy:
            raise NodeError(f"127.0.0.1 port(s) {busy} already in use (a {NODE} left over "
                            f"from an earlier run? `rabbitmqctl -n {NODE} stop`)")
        self._write_files()
        deadline = time.monotonic() + timeout
        with open(self.base / "startup.out", "wb") as out:
            # -detached: the node outlives this call, so its output must not be a pipe
            proc = subprocess.run(["rabbitmq-server", "-detached"], env=self.env(),
                                  stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=60, check=False)
        self.started = True
        if proc.returncode != 0:
            raise NodeError(f"rabbitmq-server -detached exited {proc.returncode}\n"
                            f"{self.diagnostics()}")
        self._await_boot(deadline)

    def _await_boot(self, deadline: float) -> None:
        """The pid file appears within seconds (a node that dies while booting, e.g. on a
        bad rabbitmq.conf, writes none and says nothing: -detached); then await_startup,
        again while the node is still registering with epmd."""
        try:
            wait_for(lambda: self._pid() is not None, PID_FILE_TIMEOUT, interval=0.2,
                     message="its pid file")
        except AssertionError:
            raise NodeError(
                f"{NODE} wrote no pid file in {PID_FILE_TIMEOUT:.0f} s: it died while "
                f"booting, and -detached hides why: run `rabbitmq-server` in the foreground "
                f"with the environment of TLSNode.env()\n{self.diagnostics()}") from None
        last = ""
        while (left := deadline - time.monotonic()) > 0:
            pid = self._pid()
            if pid is None or not _alive(pid):
                raise NodeError(f"{NODE} (pid {pid}) exited while booting\n"
                                f"{self.diagnostics()}")
            ready = self.ctl("await_startup", "--timeout", str(max(1, int(left))),
                             timeout=left + 15)
            if ready.returncode == 0:
                return
            last = (ready.stderr or ready.stdout).strip()[-300:]
        raise NodeError(f"{NODE} did not boot in time: {last}\n{self.diagnostics()}")

    def add_user(self, name: str, password: str | None = None) -> None:
        """A user with all permissions on ``/`` (no usable password when None: EXTERNAL)."""
        for args in (["add_user", name, password or secrets.token_hex(16)],
                     ["set_permissions", "-p", "/", name, ".*", ".*", ".*"]):
            result = self.ctl(*args)
            if result.returncode != 0:
                raise NodeError(f"rabbitmqctl {args[0]} {name}: {result.stderr.strip()}")
        if password is None:
            self.ctl("clear_password", name)

    def connections(self) -> list[tuple[str, str, bool]]:
        """(user, auth mechanism, TLS?) of every client connection."""
        out = self.ctl("list_connections", "-q", "--no-table-headers",
                       "user", "auth_mechanism", "ssl").stdout
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return [(r[0], r[1], r[2] == "true") for r in rows if len(r) == 3]

    def stop(self) -> None:
        """Stop the node (if it runs) and remove the directory. Never raises."""
        try:
            if self.started:
                self._stop_node()
        finally:
            self.started = False
            shutil.rmtree(self.base, ignore_errors=True)

    def _stop_node(self) -> None:
        pid = self._pid()
        if pid is None:  # no pid file (yet): stop whatever answers to the name, if anything
            self.ctl("stop", timeout=60)
            return
        if not _alive(pid):
            return
        # `stop PIDFILE` returns once the OS process has exited
        if self.ctl("stop", str(self.pid_file), timeout=60).returncode == 0:
            return
        # the node did not answer: end the process we started, by its pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
                wait_for(lambda: not _alive(pid), 20, message=f"{NODE} (pid {pid}) to exit")
                return
            except ProcessLookupError:
                return
            except AssertionError:
                continue

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def diagnostics(self) -> str:
        """The tail of the node's start-up output and log, for error messages."""
        parts = []
        for path in [self.base / "startup.out", *sorted(self.log_base.glob("*.log"))]:
            try:
                tail = path.read_text(errors="replace").strip().splitlines()[-12:]
            except OSError:
                continue
            if tail:
                parts.append(f"--- {path.name}:\n" + "\n".join(tail))
        return "\n".join(parts) or "(no node output)"
