"""conffile.exposed_secrets: a config file holding the broker password that every user
can read is named at start-up (and by --check-config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpcworker.config import conffile


def _warnings(tmp_path: Path, text: str, mode: int) -> list[str]:
    path = tmp_path / "rpcworker.conf"
    path.write_text(text)
    path.chmod(mode)
    return conffile.exposed_secrets(conffile.prepare(["--config-file", str(path)]))


@pytest.mark.parametrize(
    "text, what",
    [
        ("[broker]\npassword = s3cret\n", "[broker] password"),
        (
            "[DEFAULT]\ntransport_url = rabbit://u:s3cret@h1:5672,u:s3cret@h2/\n",
            "[DEFAULT] transport_url",
        ),
    ],
)
def test_world_readable_file_with_a_password_is_named(tmp_path: Path, text: str, what: str) -> None:
    (warning,) = _warnings(tmp_path, text, 0o644)
    assert str(tmp_path / "rpcworker.conf") in warning
    assert what in warning and "mode 0644" in warning
    assert "s3cret" not in warning
    assert _warnings(tmp_path, text, 0o602)  # world-writable is as bad


@pytest.mark.parametrize(
    "text, mode",
    [
        ("[broker]\npassword = s3cret\n", 0o640),  # owner and group only: fine
        ("[broker]\nuserid = bob\n", 0o644),  # no password in the file
        ("[DEFAULT]\ntransport_url = rabbit://u@h1:5672/\n", 0o644),  # URL without password
    ],
)
def test_no_warning(tmp_path: Path, text: str, mode: int) -> None:
    assert _warnings(tmp_path, text, mode) == []


def test_password_from_a_second_file_names_that_file(tmp_path: Path) -> None:
    public, private = tmp_path / "public.conf", tmp_path / "secret.conf"
    public.write_text("[broker]\nhostname = h\n")
    private.write_text("[broker]\npassword = s3cret\n")
    public.chmod(0o644)
    private.chmod(0o644)
    conf = conffile.prepare(["--config-file", str(public), "--config-file", str(private)])
    (warning,) = conffile.exposed_secrets(conf)
    assert str(private) in warning and str(public) not in warning


@pytest.mark.parametrize(
    "text, warned",
    [
        ("[broker]\nhostname = 127.0.0.1\nuserid = guest\npassword = guest\n", False),
        ("[broker]\nhostname = localhost\npassword = guest\n", False),  # userid's default: guest
        ("[broker]\nhostname = rabbit1\nuserid = guest\npassword = guest\n", True),
        (
            "[DEFAULT]\ntransport_url = rabbit://h1/\n[broker]\nhostname = 127.0.0.1\n"
            "password = guest\n",
            True,
        ),
        ("[broker]\nhostname = 127.0.0.1\nuserid = ops\npassword = guest\n", True),
    ],
)
def test_the_default_guest_user_on_loopback_is_no_secret(
    tmp_path: Path, text: str, warned: bool
) -> None:
    """RabbitMQ's guest/guest logs in from localhost only: the repository's example config
    (make run) gets no warning, a real config does."""
    assert bool(_warnings(tmp_path, text, 0o644)) is warned


def test_the_shipped_example_config_gets_no_warning() -> None:
    path = Path(__file__).parents[2] / "etc" / "rpcworker" / "rpcworker.conf"
    conf = conffile.prepare(["--config-file", str(path)])
    assert conffile.exposed_secrets(conf) == []
