from rpcworker.testing import rpcworker_handler  # noqa: F401
