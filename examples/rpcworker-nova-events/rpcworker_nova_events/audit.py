"""``nova_instance_audit``: who did what to which instance, and when, from Nova's
``compute.instance.*`` notifications (``oslo_messaging.Notifier``, driver messagingv2).

It consumes the ``info`` and ``error`` priorities (the methods named after them) and
answers one RPC method, ``history(ctxt, instance_id)``, from the same binding set::

    [binding:nova_audit]            # the notifications
    type = notification
    handler = nova_instance_audit
    exchange = nova
    filter_event_type = compute\\.instance\\.
    max_retries = 3
    dead_letter_queue = nova_audit.parked

    [binding:nova_audit_api]        # the RPC method
    type = rpc
    handler = nova_instance_audit
    topic = nova_audit
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterable
from typing import Any

from oslo_config import cfg

import rpcworker

GROUP = "nova_audit"
_opts = [
    cfg.StrOpt(
        "path",
        help="File the audit trail is appended to, one JSON line per "
        "entry. Unset: kept in memory only.",
    ),
    cfg.IntOpt("keep", default=10000, min=1, help="Entries kept in memory for history()."),
]

PREFIX = "compute.instance."


def list_opts() -> list[tuple[str, Iterable[cfg.Opt]]]:
    return [(GROUP, _opts)]


class InstanceAudit:
    """An audit trail of Nova's compute.instance.* notifications; history() answers it."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(_opts, group=GROUP)
        self.path = conf[GROUP].path
        self._lock = threading.Lock()
        self._entries: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=conf[GROUP].keep
        )

    # -- notifications (the priority methods) -----------------------------------------

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        """An instance action completed, started, ... (``compute.instance.create.end``)."""
        self._audit(ctxt, publisher_id, event_type, payload, metadata, failed=False)

    def error(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        """An instance action failed (``compute.instance.create.error``)."""
        self._audit(ctxt, publisher_id, event_type, payload, metadata, failed=True)

    # -- RPC ---------------------------------------------------------------------------

    def history(self, ctxt: dict[str, Any], instance_id: str) -> list[dict[str, Any]]:
        """The audit entries of one instance, oldest first."""
        with self._lock:
            return [e for e in self._entries if e["instance_id"] == instance_id]

    # -- internals ---------------------------------------------------------------------

    def _audit(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
        failed: bool,
    ) -> None:
        if not isinstance(event_type, str) or not event_type.startswith(PREFIX):
            return  # another service's notification: nothing to audit
        instance_id = _instance_id(payload)
        if instance_id is None:  # a notification we cannot file: parked, never retried
            raise rpcworker.Reject(f"{event_type}: no instance id in the payload")
        host = publisher_id.partition(".")[2] if isinstance(publisher_id, str) else ""
        entry = {
            "instance_id": instance_id,
            "action": event_type[len(PREFIX) :],
            "failed": failed,
            "user_id": ctxt.get("user_id") or ctxt.get("user"),
            "project_id": ctxt.get("project_id") or ctxt.get("project"),
            "host": host or None,
            "message_id": metadata.get("message_id"),
            "timestamp": metadata.get("timestamp"),
        }
        with self._lock:
            self._entries.append(entry)
            if self.path:
                with open(self.path, "a") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")


def _instance_id(payload: Any) -> str | None:
    """The instance's id in a legacy payload (``instance_id``) or a versioned one
    (``nova_object.data.uuid``)."""
    if not isinstance(payload, dict):
        return None
    legacy = payload.get("instance_id")
    if isinstance(legacy, str):
        return legacy
    data = payload.get("nova_object.data")
    uuid = data.get("uuid") if isinstance(data, dict) else None
    return uuid if isinstance(uuid, str) else None
