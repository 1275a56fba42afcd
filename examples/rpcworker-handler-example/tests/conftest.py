# The `rpcworker_handler` fixture (a factory of started HandlerFixtures). In a conftest.py
# at your rootdir, `pytest_plugins = ["rpcworker.testing"]` does the same; pytest refuses
# pytest_plugins in a conftest.py below the rootdir, hence the import here.
from rpcworker.testing import rpcworker_handler  # noqa: F401
