from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from oslo_config import cfg

from rpcworker.config import conffile


@pytest.fixture
def make_conf(tmp_path: Path) -> Callable[..., cfg.ConfigOpts]:
    """make_conf(ini_text, *extra_args) -> a prepared private ConfigOpts."""

    def make(text: str, *args: str) -> cfg.ConfigOpts:
        path = tmp_path / "rpcworker.conf"
        path.write_text(textwrap.dedent(text))
        return conffile.prepare(["--config-file", str(path), *args], default_config_files=[])

    return make
