"""Which notifications a notification binding's filters let through to its handler, as
oslo.messaging's ``NotificationFilter`` decides (``notify/filter.py``). Pure.
"""

from __future__ import annotations

import re

from rpcworker.config.bindingconf import Binding
from rpcworker.wire.decoding import Notification


def matches(binding: Binding, notification: Notification) -> bool:
    """Whether the binding's filters let ``notification`` through (``re.match``, as
    oslo's NotificationFilter; a filter not set lets everything through)."""
    for pattern, value in (
        (binding.filter_event_type, notification.event_type),
        (binding.filter_publisher_id, notification.publisher_id),
    ):
        if pattern is not None and (not isinstance(value, str) or re.match(pattern, value) is None):
            return False
    return True
