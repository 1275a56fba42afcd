"""rpcworker's benchmark harness (issue 4): ``python -m benchmarks.run`` or ``make bench``."""
