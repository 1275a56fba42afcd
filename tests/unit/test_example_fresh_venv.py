"""examples/rpcworker-handler-example installs and passes its tests in a fresh virtual
environment, with the two commands its README gives:

    python -m venv v && v/bin/pip install RPCWORKER_DIR 'EXAMPLE_DIR[test]'
    cd EXAMPLE_DIR && ../v/bin/pytest

Nothing of this checkout's .venv is visible there: the dependencies come from the
package index pip is configured with (PyPI, or this machine's mirror/wheelhouse). The
sources are copied first, because pip builds a local directory in place (build/,
*.egg-info). Takes about 30-60 s; skipped when pip cannot reach an index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "rpcworker-handler-example"
NETWORK_ERRORS = (
    "No matching distribution found",
    "Could not find a version",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
)
_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "build", ".pytest_cache", ".venv", "*.pyc"
)


def test_example_installs_and_passes_in_a_fresh_venv(tmp_path: Path) -> None:
    src = tmp_path / "rpcworker"
    shutil.copytree(ROOT / "rpcworker", src / "rpcworker", ignore=_IGNORE)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example, ignore=_IGNORE)
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(src), f"{example}[test]"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if (
        pip.returncode != 0
        and any(e in pip.stderr for e in NETWORK_ERRORS)
        and os.environ.get("CI") != "true"
    ):
        pytest.skip(f"pip cannot reach a package index: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr[-3000:]
    # the installed plugin is what rpcworker sees
    listed = subprocess.run(
        [str(venv / "bin" / "rpcworker"), "--list-handlers"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert "rpcworker_handler_example.mailer:MailerHandler" in listed.stdout
    assert "methods: pause, resume, send, sent_to, status" in listed.stdout
    tests = subprocess.run(
        [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider"],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout
