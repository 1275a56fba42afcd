"""An example rpcworker handler plugin."""
