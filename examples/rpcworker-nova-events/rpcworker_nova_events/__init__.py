"""An rpcworker notification plugin: an audit trail of Nova's instance notifications."""
