"""Request -> handler -> Outcome. The ONE place where the ack policy is decided.

The policy (``acknowledge = after``, the default, at-least-once):

=====================================  =========  =================================
what happened                          action     reply (calls only)
=====================================  =========  =================================
handler returned                       ack        the result
handler raised ``Reject``              reject     the error
handler raised ``Requeue``             requeue    none yet (the retry answers);
                                                  reject + the error when the message
                                                  was already redelivered
handler raised anything else, call     ack        the error (the caller has its answer)
handler raised anything else, cast     reject     -
no such method / version, call         ack        NoSuchMethod / UnsupportedVersion
no such method / version, cast         reject     -
event and no ``handle_message``        reject     -
refused before dispatch (bad message)  reject     the error, when a reply route exists
=====================================  =========  =================================

``reject`` never requeues: the message is dropped, or dead-lettered where the
queue has a dead-letter exchange. No outcome makes a message loop forever.

With ``acknowledge = before`` the delivery is acked on receipt (at-most-once,
as oslo.messaging's RPC server does) and the action of the outcome is ``none``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from oslo_log import log as logging

from rpcworker import protocol
from rpcworker.bindings import Binding
from rpcworker.errors import NoSuchMethod, Reject, Requeue, UnsupportedVersion
from rpcworker.message import Message

LOG = logging.getLogger(__name__)

#: handler attributes that are never RPC methods, besides the "_" names
_NOT_RPC = frozenset({"handle_message", "target"})


class Action(enum.Enum):
    NONE = "none"  # already acked on receipt
    ACK = "ack"
    REJECT = "reject"
    REQUEUE = "requeue"


@dataclasses.dataclass(frozen=True)
class Outcome:
    action: Action
    reply: protocol.Reply | None = None


def ack_on_receipt(binding: Binding) -> bool:
    """Whether the delivery is acked before the handler runs."""
    return binding.ack_before


def refused(binding: Binding, rejected: protocol.Rejected) -> Outcome:
    """Outcome of a delivery that ``protocol.decode`` refused."""
    reply = None
    if rejected.reply is not None:
        reply = protocol.encode_error(rejected.reply, "InvalidRequest", "rpcworker.errors",
                                      rejected.reason)
    return Outcome(Action.REJECT, reply)


def dispatch(handler: Any, binding: Binding, request: protocol.Request) -> Outcome:
    """Run ``request`` on ``handler`` and decide the outcome. Runs in a handler thread.

    Never raises: every failure becomes an Outcome.
    """
    after = not binding.ack_before
    try:
        if request.is_rpc:
            method = find_method(handler, request)
            result = method(dict(request.context), **request.args)
        else:
            on_message = getattr(handler, "handle_message", None)
            if on_message is None:
                LOG.error("binding %s: handler %s has no handle_message(); event on %r "
                          "with routing key %r rejected", binding.name, binding.handler,
                          request.exchange, request.routing_key)
                return Outcome(Action.REJECT if after else Action.NONE)
            result = on_message(Message.from_request(request))
    except Requeue as exc:
        if after and not request.redelivered:
            LOG.info("binding %s: handler asked to requeue %s: %s", binding.name,
                     _what(request), exc)
            return Outcome(Action.REQUEUE)
        LOG.warning("binding %s: handler asked to requeue %s again (or acknowledge = "
                    "before); rejecting it: %s", binding.name, _what(request), exc)
        return _failed(binding, request, exc, Action.REJECT, log=False)
    except Reject as exc:
        LOG.warning("binding %s: handler rejected %s: %s", binding.name, _what(request), exc)
        return _failed(binding, request, exc, Action.REJECT, log=False)
    except (NoSuchMethod, UnsupportedVersion) as exc:
        LOG.warning("binding %s: %s: %s", binding.name, _what(request), exc)
        return _failed(binding, request, exc, Action.ACK if request.is_call else Action.REJECT,
                       log=False)
    except Exception as exc:
        return _failed(binding, request, exc,
                       Action.ACK if request.is_call else Action.REJECT, log=True)
    if request.reply is None:
        return Outcome(Action.ACK if after else Action.NONE)
    try:
        reply = protocol.encode_result(request.reply, result)
    except (TypeError, ValueError) as exc:
        LOG.error("binding %s: result of %s is not JSON-serialisable: %s", binding.name,
                  _what(request), exc)
        reply = protocol.encode_failure(request.reply, exc)
    return Outcome(Action.ACK if after else Action.NONE, reply)


def _failed(binding: Binding, request: protocol.Request, exc: Exception, action: Action,
            *, log: bool) -> Outcome:
    if binding.ack_before:
        action = Action.NONE
    if log:
        LOG.error("binding %s: handler %s failed on %s (%s)", binding.name, binding.handler,
                  _what(request), "error returned to the caller" if request.is_call
                  else f"message {_action_word(action)}", exc_info=exc)
    reply = protocol.encode_failure(request.reply, exc) if request.reply is not None else None
    return Outcome(action, reply)


def _action_word(action: Action) -> str:
    return {Action.REJECT: "rejected", Action.ACK: "acked", Action.NONE: "already acked",
            Action.REQUEUE: "requeued"}[action]


def _what(request: protocol.Request) -> str:
    if request.method is not None:
        kind = "call" if request.is_call else "cast"
        return f"{kind} {request.method!r}"
    return f"event (routing key {request.routing_key!r})"


def find_method(handler: Any, request: protocol.Request) -> Any:
    """The handler method for ``request``, by oslo.messaging's rules; raises on refusal."""
    method = request.method or ""
    target = getattr(handler, "target", None)
    namespace = getattr(target, "namespace", None)
    accepted = [namespace] + list(getattr(target, "legacy_namespaces", None) or [])
    handler_version = getattr(target, "version", None) or "1.0"
    if request.namespace not in accepted or not version_is_compatible(handler_version,
                                                                      request.version):
        raise UnsupportedVersion(request.version, method)
    if method.startswith("_") or method in _NOT_RPC:
        raise NoSuchMethod(method)
    func = getattr(handler, method, None)
    if func is None or not callable(func):
        raise NoSuchMethod(method)
    return func


def version_is_compatible(implemented: str, requested: str) -> bool:
    """oslo.messaging's ``_utils.version_is_compatible``; malformed versions never match."""
    try:
        imp = [int(p) for p in implemented.split(".")]
        req = [int(p) for p in requested.split(".")]
    except ValueError:
        return False
    if len(imp) < 2 or len(req) < 2:
        return False
    imp_rev = imp[2] if len(imp) > 2 else 0
    req_rev = req[2] if len(req) > 2 else 0
    if req[0] != imp[0]:
        return False
    if req[1] > imp[1]:
        return False
    if req[1] == imp[1] and req_rev > imp_rev:
        return False
    return True
