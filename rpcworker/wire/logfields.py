"""How log lines name a message: the words, the ids and the ``extra`` fields.

Every line about a delivery names its binding, what the message is (``call 'm'``,
``cast 'm'``, ``event (...)``) and its ids, in one form everywhere; with ``use_json``
the same fields are separate keys under ``"extra"``. Built only for lines that are
logged: the hot path never calls these.
"""

from __future__ import annotations

from typing import Any

from rpcworker.wire import decoding


def what(request: decoding.Request) -> str:
    """``call 'm' (msg_id='..', unique_id='..')``, ``cast 'm' (unique_id='..')`` or
    ``event (exchange 'e', routing key 'k'; message_id='..')``."""
    ids = ", ".join(f"{key}={value!r}" for key, value in log_ids(request).items())
    n = request.notification
    if n is not None:
        return f"notification {n.event_type!r} ({n.priority or 'no priority'}; {ids or 'no id'})"
    if request.method is not None:
        kind = "call" if request.is_call else "cast"
        return f"{kind} {request.method!r} ({ids or 'no id'})"
    return (
        f"event (exchange {request.exchange!r}, routing key {request.routing_key!r}"
        f"{'; ' + ids if ids else ''})"
    )


def what_delivered(request: decoding.Request | None) -> str:
    """``what(request)``, or ``a message that did not decode``."""
    return what(request) if request is not None else "a message that did not decode"


def log_ids(request: decoding.Request) -> dict[str, Any]:
    """The ids a line about ``request`` carries: ``msg_id`` (an oslo call's ``_msg_id``),
    ``unique_id`` (oslo ``_unique_id``), ``correlation_id`` (plain AMQP RPC),
    ``message_id`` (the AMQP property: an event's id)."""
    ids: dict[str, Any] = {}
    reply = request.reply
    if reply is not None and reply.msg_id is not None:
        ids["msg_id"] = reply.msg_id
    if reply is not None and reply.correlation_id is not None:
        ids["correlation_id"] = reply.correlation_id
    if request.method is not None and request.unique_id is not None:
        ids["unique_id"] = request.unique_id
    message_id = request.properties.get("message_id")
    if request.notification is not None:  # the notification's own id
        message_id = request.notification.metadata.get("message_id") or message_id
    if message_id is not None:
        ids["message_id"] = message_id
    return ids


def log_fields(binding: str, request: decoding.Request | None) -> dict[str, Any]:
    """``extra`` of a line about a message: ``binding``, ``method`` (``"event"`` for an
    event) and the ids of ``log_ids``."""
    if request is None:
        return {"binding": binding}
    method = (
        request.method
        if request.method is not None
        else "notification"
        if request.notification is not None
        else "event"
    )
    return {"binding": binding, "method": method, **log_ids(request)}


def message_ids(message: Any, request: decoding.Request | None) -> dict[str, Any]:
    """The ids of a delivery: the decoded request's, else the AMQP ``message_id``
    property when there is one (all an undecodable message has)."""
    if request is not None:
        return log_ids(request)
    message_id = (getattr(message, "properties", None) or {}).get("message_id")
    return {} if message_id is None else {"message_id": message_id}


def id_text(ids: dict[str, Any]) -> str:
    """``, msg_id='..', unique_id='..'`` (repr: an id cannot forge log lines)."""
    return "".join(f", {key}={value!r}" for key, value in ids.items())


def describe(message: Any, request: decoding.Request | None = None) -> str:
    """``(exchange 'e', routing key 'k', content type 't', ids...)`` of a delivery."""
    info = getattr(message, "delivery_info", {}) or {}
    return (
        f"(exchange {info.get('exchange', '')!r}, routing key "
        f"{info.get('routing_key', '')!r}, content type {message.content_type!r}"
        f"{id_text(message_ids(message, request))})"
    )


def printable(text: str) -> str:
    """``text`` with control characters escaped: a message cannot forge log lines."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
