"""A plugin module that fails to import."""

raise ImportError("rpcworker_testplugin.broken cannot be imported (on purpose)")
