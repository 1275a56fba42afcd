"""The shipped units under a real systemd (a booted Debian bookworm container on the host
network, the machine's RabbitMQ on 127.0.0.1:5672), asserted with systemctl and
journalctl as an operator would."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

from tests.helpers import wait_for
from tests.systemd.conftest import conf_text, write_conf
from tests.systemd.machine import Machine


def consumers(queue: str) -> int:
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--formatter", "json", "name", "consumers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return next((int(q["consumers"]) for q in json.loads(out or "[]") if q["name"] == queue), 0)


def delete_queues(*names: str) -> None:
    for name in names:
        subprocess.run(
            ["rabbitmqctl", "delete_queue", name], capture_output=True, timeout=60, check=False
        )


def call(m: Machine, conf: str, topic: str, method: str, *args: str) -> Any:
    p = m.run(
        "rpcworker-client",
        "--config-file",
        conf,
        "call",
        topic,
        method,
        *args,
        "--timeout",
        "20",
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def rpc_and_recorder(uid: str, extra: str = "", recorder: str = "") -> str:
    return (
        conf_text(uid, "api, rec", extra)
        + f"""
[binding:api]
type = rpc
handler = echo
topic = api-{uid}

[binding:rec]
type = rpc
handler = recorder
topic = rec-{uid}
max_retries = 0

[recorder]
path = /var/lib/rpcworker-test/records-{uid}.jsonl
{recorder}"""
    )


def test_the_docs_install_starts_the_service_consuming_every_binding(machine: Machine) -> None:
    """The docs' commands ended with `systemctl enable --now rpcworker` on the shipped
    example config: it returned only after READY=1, i.e. every binding consumes."""
    m = machine
    try:
        assert m.show("rpcworker.service", "ActiveState") == "active"
        assert m.show("rpcworker.service", "UnitFileState") == "enabled"
        status = m.show("rpcworker.service", "StatusText")
        assert status.startswith("consuming 3 of 3 binding(s)"), status
        # a quorum queue (the shipped rpc binding's) shows its consumer once Raft has
        # applied it: a moment after basic.consume-ok, so wait for it
        wait_for(
            lambda: consumers("rpcworker") >= 1 and consumers("rpcworker-events") >= 1,
            30,
            message="consumers on rpcworker and rpcworker-events",
        )
        assert call(m, "/etc/rpcworker/rpcworker.conf", "rpcworker", "echo", "--arg", "x=1") == {
            "x": 1
        }
    finally:
        m.run("systemctl", "disable", "--now", "rpcworker")


def test_start_returns_once_consuming_reload_serves_sigterm_finishes_in_flight(
    machine: Machine, uid: str
) -> None:
    m = machine
    conf = write_conf(m, "rpcworker", rpc_and_recorder(uid))
    m.write(
        "/etc/systemd/system/rpcworker.service.d/state.conf",
        "[Service]\nStateDirectory=rpcworker-test\n",
    )
    m.run("systemctl", "daemon-reload")
    try:
        m.run("systemctl", "start", "rpcworker")
        # start returned: every binding already has its consumer on the broker
        assert consumers(f"api-{uid}") == 1 and consumers(f"rec-{uid}") == 1
        assert m.show("rpcworker", "StatusText").startswith("consuming 2 of 2 binding(s)")
        pid = m.show("rpcworker", "MainPID")

        m.run("systemctl", "reload", "rpcworker")  # returns after RELOADING=1 ... READY=1
        assert m.show("rpcworker", "MainPID") == pid
        assert m.show("rpcworker", "ActiveState") == "active"
        assert call(m, conf, f"api-{uid}", "echo", "--arg", "after=reload") == {"after": "reload"}

        # SIGTERM with a call in flight: the handler finishes, the reply is sent, exit 0
        slow = subprocess.Popen(
            [
                "nsenter",
                f"--target={m.leader}",
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--",
                "rpcworker-client",
                "--config-file",
                conf,
                "call",
                f"rec-{uid}",
                "slow",
                "--arg",
                "seconds=4",
                "--arg",
                "tag=inflight",
                "--timeout",
                "30",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        records = f"/var/lib/rpcworker-test/records-{uid}.jsonl"
        wait_for(
            lambda: "start" in m.run("cat", records, check=False).stdout,
            20,
            message="the slow call running",
        )
        started = time.monotonic()
        m.run("systemctl", "stop", "rpcworker", timeout=120)
        assert time.monotonic() - started >= 1.0  # it waited for the handler
        out, err = slow.communicate(timeout=60)
        assert slow.returncode == 0 and json.loads(out) == {"tag": "inflight"}, err
        assert m.show("rpcworker", "ExecMainStatus") == "0"
        assert m.show("rpcworker", "Result") == "success"
        log = m.journal("rpcworker")
        assert "draining" in log.lower() or "in-flight" in log, log[-2000:]
    finally:
        m.run("systemctl", "stop", "rpcworker", check=False)
        m.run("rm", "-f", "/etc/systemd/system/rpcworker.service.d/state.conf")
        m.run("systemctl", "daemon-reload")
        delete_queues(f"api-{uid}", f"rec-{uid}")


def test_a_stopped_loop_is_killed_by_the_watchdog_and_restarted(machine: Machine, uid: str) -> None:
    m = machine
    write_conf(
        m, "rpcworker", rpc_and_recorder(uid).replace("bindings = api, rec", "bindings = api")
    )
    # the shipped WatchdogSec=30 with RestartSec=5 works the same; 6 s keeps the test short
    m.write("/etc/systemd/system/rpcworker.service.d/watchdog.conf", "[Service]\nWatchdogSec=6\n")
    m.run("systemctl", "daemon-reload")
    try:
        m.run("systemctl", "start", "rpcworker")
        pid = m.show("rpcworker", "MainPID")
        restarts = int(m.show("rpcworker", "NRestarts"))
        m.run("systemctl", "kill", "--signal=SIGSTOP", "rpcworker")
        wait_for(
            lambda: (
                m.show("rpcworker", "MainPID") not in ("0", pid)
                and m.show("rpcworker", "ActiveState") == "active"
            ),
            60,
            message="a new main process after the watchdog",
        )
        assert int(m.show("rpcworker", "NRestarts")) == restarts + 1
        assert "Watchdog timeout" in m.journal("rpcworker")
        wait_for(lambda: consumers(f"api-{uid}") == 1, 30, message="consuming again")
    finally:
        m.run("systemctl", "stop", "rpcworker", check=False)
        m.run("rm", "-f", "/etc/systemd/system/rpcworker.service.d/watchdog.conf")
        m.run("systemctl", "daemon-reload")
        delete_queues(f"api-{uid}")


def test_a_configuration_error_exits_2_and_is_not_restarted(machine: Machine, uid: str) -> None:
    m = machine
    write_conf(m, "bad", conf_text(uid, "x") + "\n[binding:x]\ntype = direct\nhandler = echo\n")
    result = m.run("systemctl", "start", "rpcworker@bad", check=False)
    assert result.returncode != 0
    wait_for(
        lambda: m.show("rpcworker@bad", "ActiveState") == "failed",
        30,
        message="rpcworker@bad failed",
    )
    assert m.show("rpcworker@bad", "ExecMainStatus") == "2"
    # RestartSec=5 has passed twice over and it was not started again
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        assert m.show("rpcworker@bad", "NRestarts") == "0"
        time.sleep(1)
    assert "routing_key: required for a direct binding" in m.journal("rpcworker@bad")
    m.run("systemctl", "reset-failed", "rpcworker@bad", check=False)


def test_a_template_instance_with_two_worker_processes(machine: Machine, uid: str) -> None:
    m = machine
    conf = write_conf(
        m,
        "x",
        rpc_and_recorder(uid, extra="workers = 2").replace("bindings = api, rec", "bindings = api"),
    )
    try:
        m.run("systemctl", "start", "rpcworker@x")
        assert consumers(f"api-{uid}") == 2  # one consumer per worker process, at READY=1
        status = m.show("rpcworker@x", "StatusText")
        assert status.startswith("2/2 workers consuming"), status
        assert call(m, conf, f"api-{uid}", "echo", "--arg", "w=2") == {"w": 2}
        children = m.run("pgrep", "-P", m.show("rpcworker@x", "MainPID")).stdout.split()
        assert len(children) == 2
        assert (
            "rpcworker-x"
            in m.run("journalctl", "--no-pager", "-u", "rpcworker@x", check=False).stdout
        )
        m.run("systemctl", "stop", "rpcworker@x", timeout=120)
        assert m.show("rpcworker@x", "Result") == "success"
    finally:
        m.run("systemctl", "stop", "rpcworker@x", check=False)
        delete_queues(f"api-{uid}")


def test_exposure_stays_low(machine: Machine) -> None:
    for unit in ("rpcworker.service", "rpcworker@x.service"):
        out = machine.run("systemd-analyze", "security", "--no-pager", unit, check=False).stdout
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert match, out[-2000:]
        assert float(match.group(1)) <= 2.0, out[-3000:]


def test_a_plugin_that_writes_a_file_needs_the_docs_drop_in(machine: Machine, uid: str) -> None:
    """ProtectSystem=strict: the recorder cannot write its file until the drop-in the docs
    give (ReadWritePaths=) is installed."""
    m = machine
    data = f"/var/lib/recorder-{uid}"
    m.run("install", "-d", "-m", "0750", "-o", "rpcworker", "-g", "rpcworker", data)
    conf = write_conf(
        m, "rpcworker", rpc_and_recorder(uid).replace("/var/lib/rpcworker-test", data)
    )
    try:
        m.run("systemctl", "start", "rpcworker")
        p = m.run(
            "rpcworker-client",
            "--config-file",
            conf,
            "call",
            f"rec-{uid}",
            "record",
            "--arg",
            "n=1",
            "--timeout",
            "20",
            check=False,
        )
        assert p.returncode == 1 and "Read-only file system" in p.stderr, p
        m.write(
            "/etc/systemd/system/rpcworker.service.d/override.conf",
            f"[Service]\nReadWritePaths={data}\n",
        )
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "restart", "rpcworker")
        assert call(m, conf, f"rec-{uid}", "record", "--arg", "n=2") == {"n": 2}
        assert '"n": 2' in m.run("cat", f"{data}/records-{uid}.jsonl").stdout
    finally:
        m.run("systemctl", "stop", "rpcworker", check=False)
        m.run("rm", "-f", "/etc/systemd/system/rpcworker.service.d/override.conf")
        m.run("systemctl", "daemon-reload")
        delete_queues(f"api-{uid}", f"rec-{uid}")
