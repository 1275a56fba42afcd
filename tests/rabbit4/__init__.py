"""Tests against a STRICT RabbitMQ 4.x node: the deprecated features denied
(tests/rabbit4node.py, port 5674), so what a future RabbitMQ will refuse fails here now."""
