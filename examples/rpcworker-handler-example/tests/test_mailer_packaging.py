"""The installed distribution: its entry points and its oslo-config-generator namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rpcworker_handler_example.mailer import MailerHandler
from stevedore import driver

from rpcworker.config import plugins


def test_entry_point_loads_the_handler() -> None:
    mgr = driver.DriverManager(plugins.NAMESPACE, "mailer", invoke_on_load=False)
    assert mgr.driver is MailerHandler
    [info] = [i for i in plugins.list_handlers() if i.name == "mailer"]
    assert info.target == "rpcworker_handler_example.mailer:MailerHandler"
    assert (info.namespace, info.version) == ("mailer", "2.1")
    assert info.methods == ("pause", "resume", "send", "sent_to", "status")


def test_oslo_config_generator_documents_the_options(tmp_path: Path) -> None:
    generator = Path(sys.executable).with_name("oslo-config-generator")
    out = tmp_path / "mailer.conf.sample"
    result = subprocess.run(
        [str(generator), "--namespace", "rpcworker_handler_example", "--output-file", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "[mailer]" in text
    for line in (
        "#sender = noreply@example.org",
        "#max_recipients = 10",
        "#blocked_domains =",
        "Most recipients of one mail",
    ):
        assert line in text, text
