"""The built-in handler plugins: ``echo`` (echo, ping, context, sleep, fail) and ``log``."""
