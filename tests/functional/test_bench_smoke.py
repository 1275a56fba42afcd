"""A small run of the benchmark harness (``benchmarks/``), so that it keeps working.

Speeds are never asserted here: only that every phase ran, measured something and wrote
its report. The broker-restart part is off. The peers that the ``bench`` extra installs
(Celery, dramatiq, nameko) get a run of their own, skipped when they are not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import BROKER_HOST, BROKER_PORT
from tests.helpers import rabbitmqctl_path_env

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--n",
    "300",
    "--rounds",
    "1",
    "--calls",
    "50",
    "--concurrent-calls",
    "160",
    "--scale-n",
    "100",
    "--rss-messages",
    "1000",
    "--profile-n",
    "2000",
    "--no-broker-restart",
    "--host",
    BROKER_HOST,
    "--port",
    str(BROKER_PORT),
]


def bench(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
    results, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            *SMALL,
            "--results",
            str(results),
            "--json",
            str(raw),
            *args,
        ],
        cwd=ROOT,
        env=rabbitmqctl_path_env(),  # the harness's own `rabbitmqctl list_queues`
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(raw.read_text())["results"], results.read_text()


def test_bench_smoke(tmp_path: Path) -> None:
    res, report = bench(tmp_path, "--contenders", "rpcworker,kombu,rpcworker-rpc,oslo")
    for key in ("rpcworker", "kombu", "rpcworker-rpc", "oslo"):
        (run,) = res["drain"][key]["rounds"]
        assert run["rate"] > 0 and run["counted"] > 0 and run["handled"] >= 300, (key, run)
    for key in ("rpcworker", "oslo", "rpcworker-pika"):
        (lat,) = res["latency"][key]["rounds"]
        assert 0 < lat["p50"] <= lat["p99"], (key, lat)
    for key in ("rpcworker", "oslo"):
        assert res["concurrency"][key]["median"] > 0
    for w in ("workers=1", "workers=2"):
        assert res["scaling"][w]["median"] > 0
        assert res["startup"][w]["median"] > 0
    assert res["memory"]["end"] > 0 and "growth" in res["memory"]
    assert "broker_restart" not in res["startup"]
    for heading in (
        "## Targets",
        "## 1. Cast drain rate",
        "## 2. RPC call latency",
        "## 3. Concurrent calls",
        "## 4. Scaling",
        "## 5. Memory",
        "## 6. Start-up",
        "## Method",
    ):
        assert heading in report


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


PEERS = [dist for dist in ("celery", "dramatiq", "nameko") if _installed(dist)]


@pytest.mark.skipif(
    not PEERS, reason="none of celery, dramatiq, nameko is installed (pip install '.[bench]')"
)
def test_bench_smoke_peers(tmp_path: Path) -> None:
    res, report = bench(
        tmp_path, "--phases", "drain", "--contenders", ",".join(["rpcworker", *PEERS])
    )
    for key in ["rpcworker", *PEERS]:
        (run,) = res["drain"][key]["rounds"]
        assert run["rate"] > 0 and run["handled"] >= 300, (key, run)
    assert "## 1. Cast drain rate" in report
