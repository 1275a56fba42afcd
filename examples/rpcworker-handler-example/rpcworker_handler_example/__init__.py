"""An example rpcworker handler plugin: a mail outbox service."""
