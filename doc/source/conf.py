"""Sphinx configuration of rpcworker's documentation (``make docs``)."""

from __future__ import annotations

import importlib.metadata
import logging

# list_opts() names the template group "binding:NAME"; the sample generator lower-cases it
# and says so at WARNING level on every build
logging.getLogger("oslo_config.generator").setLevel(logging.ERROR)

project = "rpcworker"
author = "the rpcworker engineers"
copyright = "2026, " + author  # noqa: A001 (Sphinx's name)
release = importlib.metadata.version("rpcworker")
version = release

extensions = [
    "myst_parser",                  # the pages are Markdown, as README is
    "oslo_config.sphinxext",        # .. show-options:: the reference, from the code
    "oslo_config.sphinxconfiggen",  # the sample file, generated at build time
]
myst_enable_extensions = ["deflist"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

config_generator_config_file = "../../etc/oslo-config-generator/rpcworker.conf"
sample_config_basename = "_static/rpcworker"

html_theme = "alabaster"
html_static_path = ["_static"]

man_pages = [
    ("cli/rpcworker", "rpcworker", "AMQP worker daemon for oslo.messaging RPC, "
     "notifications and events", [author], 8),
    ("cli/rpcworker-client", "rpcworker-client", "call, cast, publish, notify and handle "
     "parked messages through rpcworker's broker", [author], 1),
]
