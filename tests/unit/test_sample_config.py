"""The committed sample config is what oslo-config-generator makes from the code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "rpcworker" / "rpcworker.conf.sample"


def test_sample_is_not_stale(tmp_path: Path) -> None:
    out = tmp_path / "rpcworker.conf.sample"
    generator = shutil.which("oslo-config-generator", path=str(Path(sys.executable).parent))
    assert generator, "oslo-config-generator is not installed beside this Python"
    subprocess.run(
        [
            generator,
            "--config-file",
            str(ROOT / "etc" / "oslo-config-generator" / "rpcworker.conf"),
            "--output-file",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    assert out.read_text() == SAMPLE.read_text(), (
        "etc/rpcworker/rpcworker.conf.sample is stale: run `make sample` and commit it"
    )


def test_shipped_config_is_valid() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpcworker",
            "--config-file",
            str(ROOT / "etc" / "rpcworker" / "rpcworker.conf"),
            "--check-config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    for queue in ("'rpcworker'", "'rpcworker-events'", "'rpcworker_fanout_"):
        assert queue in result.stdout
