"""Built-in handler plugins: ``echo`` (diagnostics) and ``log``."""
