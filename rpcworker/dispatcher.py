"""Request -> handler -> Outcome. The ONE place where the ack policy is decided.

The policy (``acknowledge = after``, the default, at-least-once):

===========================================  ==============  ============================
what happened                                action          reply (calls only)
===========================================  ==============  ============================
handler returned                             ack             the result
handler raised anything, call                ack             the error (the caller has
                                                             its answer; never retried)
handler raised ``Requeue`` or anything       retry, or       -
else, cast/event                             dead-letter
                                             once max_retries
                                             retries are spent
handler raised ``Reject``                    dead-letter     the error
no such method / version, cast (on receipt)  dead-letter     (call: ack + the error)
event and no ``handle_message``              dead-letter     -
handler ran past ``handler_timeout``         as a failure    HandlerTimeout
redelivered more than ``max_redeliveries``   dead-letter     PoisonMessage
quorum, ``x-delivery-count`` >= ``delivery_  dead-letter     PoisonMessage
limit`` (the broker's last delivery)
redelivered (classic queue), within bounds   count           - (runs when it comes back)
already completed (duplicate id)             ack             the remembered reply
refused before dispatch (bad message)        dead-letter     the error, when routable
===========================================  ==============  ============================

``retry``: a copy goes to the binding's delay queue for that attempt (it comes
back after ``retry_delay`` doubling up to ``retry_delay_max``) with header
``x-rpcworker-retries``, then the original is acked. ``dead-letter``: a copy
goes to the binding's parking lot (``dead_letter_exchange``/``dead_letter_queue``)
with the reason in its headers, then the original is acked; with no parking lot
configured it is rejected without requeue (the queue's own dead-letter exchange,
if any, applies). ``count``: a copy with ``x-rpcworker-redeliveries`` incremented
goes to the tail of the same queue, then the original is acked, so crash loops
are counted on classic queues (quorum queues count with ``x-delivery-count``).
No outcome makes a message loop forever.

Quorum queues with ``x-delivery-limit`` L (``delivery_limit``): measured on RabbitMQ
3.10, the broker makes L + 1 deliveries of a message that is rejected with requeue or
whose channel closes unacked, with ``x-delivery-count`` 0, 1, ..., L; when the last one
comes back it drops the message (or dead-letters it to the queue's
``x-dead-letter-exchange``, reason ``delivery_limit``). So the delivery with count L is
never run: it is dead-lettered by us, with its reason, while we still hold it. With
``max_redeliveries`` M too, the bound is the smaller one: a redelivery with count
``c`` runs while ``c <= min(M or infinity, L - 1)``.

With ``acknowledge = before`` the delivery is acked on receipt (at-most-once, as
oslo.messaging's RPC server does): the action is ``none`` whatever happens.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from typing import Any

from oslo_log import log as logging

from rpcworker import protocol
from rpcworker.bindings import Binding
from rpcworker.errors import (
    HandlerTimeout,
    NoSuchMethod,
    PoisonMessage,
    Reject,
    Requeue,
    UnsupportedVersion,
)
from rpcworker.message import Message

LOG = logging.getLogger(__name__)

#: handler attributes that are never RPC methods, besides the "_" names
_NOT_RPC = frozenset({"handle_message", "target"})
#: what a class body defines as a method (``def``, ``staticmethod``, ``classmethod``)
_METHOD_TYPES = (types.FunctionType, staticmethod, classmethod)

RETRIES_HEADER = "x-rpcworker-retries"
REDELIVERIES_HEADER = "x-rpcworker-redeliveries"
QUORUM_DELIVERY_COUNT = "x-delivery-count"


class Action(enum.Enum):
    NONE = "none"  # already acked on receipt
    ACK = "ack"
    RETRY = "retry"  # to the delay queue of the next attempt, then ack
    DEAD_LETTER = "dead-letter"  # to the parking lot then ack, or reject (no requeue)
    COUNT = "count"  # to the tail of the same queue with the redelivery count + 1, then ack


@dataclasses.dataclass(frozen=True)
class Outcome:
    action: Action
    reply: protocol.Reply | None = None
    #: why it failed (dead-letter headers, logs)
    reason: str | None = None


def ack_on_receipt(binding: Binding) -> bool:
    """Whether the delivery is acked before the handler runs."""
    return binding.ack_before


def int_header(headers: Any, name: str) -> int:
    try:
        return max(0, int(headers.get(name) or 0))
    except (TypeError, ValueError, AttributeError, OverflowError):  # Overflow: a float inf
        return 0


def retries_of(headers: Any) -> int:
    return int_header(headers, RETRIES_HEADER)


def limited_by_delivery_limit(binding: Binding) -> bool:
    """Whether the quorum queue's delivery_limit, not max_redeliveries, bounds the
    redeliveries that are run (the smaller bound wins; max_redeliveries 0 is off)."""
    limit, most = binding.delivery_limit, binding.max_redeliveries
    return bool(limit) and (not most or limit - 1 < most)


def redelivery_bound(binding: Binding) -> int | None:
    """The most redeliveries of one message that are run on a quorum binding (None: no
    bound): max_redeliveries (0 = off) or, with delivery_limit L > 0, L - 1 when smaller,
    since the broker's last delivery (x-delivery-count L) is dead-lettered, not run."""
    if limited_by_delivery_limit(binding):
        return binding.delivery_limit - 1
    return binding.max_redeliveries or None


def on_receipt(binding: Binding, request: protocol.Request) -> Outcome | None:
    """Decide before dispatch: a poison message, or a redelivery to count. None: run it."""
    if binding.ack_before or not request.redelivered:
        return None
    headers = request.headers or {}
    if binding.quorum and QUORUM_DELIVERY_COUNT in headers:
        count = int_header(headers, QUORUM_DELIVERY_COUNT)
        bound = redelivery_bound(binding)
        if bound is None or count <= bound:
            return None
        if limited_by_delivery_limit(binding):
            reason = (f"x-delivery-count {count} reached the queue's delivery limit "
                      f"(delivery_limit {binding.delivery_limit}): the broker's last "
                      f"delivery is dead-lettered instead of run; its handler crashed, hung "
                      f"or lost the connection {count} times")
            return _poison(binding, request, reason)
    elif not binding.max_redeliveries:
        return None
    else:  # classic queues (and an rpc binding's fanout queue): counted by copies
        count = int_header(headers, REDELIVERIES_HEADER) + 1
        if count <= binding.max_redeliveries:
            return Outcome(Action.COUNT, reason=f"redelivery {count}")
    reason = (f"redelivered {count} times (max_redeliveries {binding.max_redeliveries}): "
              f"its handler crashed, hung or lost the connection every time")
    return _poison(binding, request, reason)


def _poison(binding: Binding, request: protocol.Request, reason: str) -> Outcome:
    """Dead-letter a poison message without running it; a call gets PoisonMessage."""
    LOG.error("binding %s: poison message %s dead-lettered: %s", binding.name,
              _what(request), reason, extra=log_fields(binding.name, request))
    reply = None
    if request.reply is not None:
        reply = protocol.encode_failure(request.reply, PoisonMessage(reason))
    return Outcome(Action.DEAD_LETTER, reply, reason)


def refused(binding: Binding, rejected: protocol.Rejected) -> Outcome:
    """Outcome of a delivery that ``protocol.decode`` refused."""
    reply = None
    if rejected.reply is not None:
        reply = protocol.encode_error(rejected.reply, "InvalidRequest", "rpcworker.errors",
                                      rejected.reason)
    return Outcome(Action.DEAD_LETTER, reply, f"refused: {rejected.reason}")


#: (handler, method, namespace, version) that find_method accepted: the loop thread
#: checks every request, and the class lookup costs a few microseconds. Only successes
#: are kept (a flood of unknown names cannot fill it), and it is bounded.
_FOUND: set[tuple[Any, ...]] = set()
_FOUND_MAX = 4096


def _has_getattr_hook(cls: type) -> bool:
    return any("__getattr__" in vars(k) for k in cls.__mro__ if k is not object)


def unknown_method(handler: Any, binding: Binding, request: protocol.Request
                   ) -> Outcome | None:
    """Decide on receipt, before any receipt ack: a request for a method or version the
    handler does not have is refused (a cast is dead-lettered, a call acked and answered
    with the error) and never reaches a handler thread. None: the method exists.

    The caller logs the refusal (rate limited, as for a message ``decode`` refused)."""
    if not request.is_rpc:
        return None
    key = (id(handler), type(handler), request.method, request.namespace, request.version)
    if key in _FOUND:
        return None
    try:
        find_method(handler, request)
        if not _has_getattr_hook(type(handler)):  # its answers may change: never cached
            if len(_FOUND) >= _FOUND_MAX:
                _FOUND.clear()
            _FOUND.add(key)
    except (NoSuchMethod, UnsupportedVersion) as exc:
        reply = protocol.encode_failure(request.reply, exc) if request.reply else None
        action = Action.ACK if request.is_call else Action.DEAD_LETTER
        return Outcome(action, reply, f"{type(exc).__name__}: {exc}")
    return None


def duplicate(binding: Binding, reply: protocol.Reply | None) -> Outcome:
    """A request whose id already completed: not run again; a call gets the same reply.

    Decided before any receipt ack, so it is acked here whatever ``acknowledge`` says."""
    return Outcome(Action.ACK, reply)


def timed_out(binding: Binding, request: protocol.Request) -> Outcome:
    """The handler is still running after ``handler_timeout``."""
    exc = HandlerTimeout(f"handler {binding.handler} did not finish {_what(request)} "
                         f"within handler_timeout ({binding.handler_timeout} s)")
    LOG.error("binding %s: %s; its thread is abandoned", binding.name, exc,
              extra=log_fields(binding.name, request))
    return _failed(binding, request, exc, log=False)


def dispatch(handler: Any, binding: Binding, request: protocol.Request) -> Outcome:
    """Run ``request`` on ``handler`` and decide the outcome. Runs in a handler thread.

    Never raises: every failure becomes an Outcome.
    """
    try:
        if request.is_rpc:
            method = find_method(handler, request)
            result = method(dict(request.context), **request.args)
        else:
            on_message = getattr(handler, "handle_message", None)
            if on_message is None:
                reason = f"handler {binding.handler} has no handle_message() for events"
                LOG.error("binding %s: %s dead-lettered: %s", binding.name, _what(request),
                          reason, extra=log_fields(binding.name, request))
                return Outcome(Action.NONE if binding.ack_before else Action.DEAD_LETTER,
                               None, reason)
            result = on_message(Message.from_request(request))
    except Requeue as exc:
        LOG.info("binding %s: handler asked to retry %s: %s", binding.name,
                 _what(request), exc, extra=log_fields(binding.name, request))
        return _failed(binding, request, exc, log=False)
    except Reject as exc:
        LOG.warning("binding %s: handler rejected %s: %s", binding.name, _what(request), exc,
                    extra=log_fields(binding.name, request))
        return _failed(binding, request, exc, log=False, final=True)
    except (NoSuchMethod, UnsupportedVersion) as exc:  # unknown_method() let it through
        LOG.warning("binding %s: %s refused: %s", binding.name, _what(request), exc,
                    extra=log_fields(binding.name, request))
        return _failed(binding, request, exc, log=False, final=True, quiet=True)
    except Exception as exc:
        return _failed(binding, request, exc, log=True)
    done = Action.NONE if binding.ack_before else Action.ACK
    if request.reply is None:
        return Outcome(done)
    try:
        reply = protocol.encode_result(request.reply, result)
    except (TypeError, ValueError) as exc:
        LOG.error("binding %s: result of %s is not JSON-serialisable: %s", binding.name,
                  _what(request), exc, extra=log_fields(binding.name, request))
        reply = protocol.encode_failure(request.reply, exc)
    return Outcome(done, reply)


def _failed(binding: Binding, request: protocol.Request, exc: Exception, *, log: bool,
            final: bool = False, quiet: bool = False) -> Outcome:
    """A failure: calls are answered with the error and acked; casts and events are
    retried while max_retries allows (unless ``final``), then dead-lettered."""
    reason = f"{type(exc).__name__}: {exc}"
    if binding.ack_before:
        action = Action.NONE
    elif request.is_call:
        action = Action.DEAD_LETTER if isinstance(exc, Reject) else Action.ACK
    elif not final and retries_of(request.headers) < binding.max_retries:
        action = Action.RETRY
    else:
        action = Action.DEAD_LETTER
    if log:
        LOG.error("binding %s: handler %s failed on %s (%s)", binding.name, binding.handler,
                  _what(request), _consequence(action, request, binding), exc_info=exc,
                  extra=log_fields(binding.name, request))
    elif action is Action.DEAD_LETTER and not request.is_call and not quiet:
        LOG.warning("binding %s: %s dead-lettered: %s", binding.name, _what(request), reason,
                    extra=log_fields(binding.name, request))
    reply = protocol.encode_failure(request.reply, exc) if request.reply is not None else None
    return Outcome(action, reply, reason)


def _consequence(action: Action, request: protocol.Request, binding: Binding) -> str:
    if request.is_call:
        return "error returned to the caller"
    if action is Action.RETRY:
        attempt = retries_of(request.headers) + 1
        return (f"retry {attempt} of {binding.max_retries} in "
                f"{binding.retry_delay_for(attempt):g} s")
    if action is Action.DEAD_LETTER:
        return f"dead-lettered after {retries_of(request.headers)} retries"
    return "already acked on receipt"


def _what(request: protocol.Request) -> str:
    """How log lines name a request: ``call 'm' (msg_id='..', unique_id='..')``,
    ``cast 'm' (unique_id='..')``, ``event (exchange 'e', routing key 'k'; message_id='..')``.

    Only called for lines that are logged: the hot path never builds it."""
    ids = ", ".join(f"{key}={value!r}" for key, value in log_ids(request).items())
    if request.method is not None:
        kind = "call" if request.is_call else "cast"
        return f"{kind} {request.method!r} ({ids or 'no id'})"
    return (f"event (exchange {request.exchange!r}, routing key {request.routing_key!r}"
            f"{'; ' + ids if ids else ''})")


what = _what


def log_ids(request: protocol.Request) -> dict[str, Any]:
    """The ids a log line about ``request`` carries: ``msg_id`` (an oslo call's
    ``_msg_id``), ``unique_id`` (oslo ``_unique_id``), ``correlation_id`` (plain AMQP
    RPC), ``message_id`` (the AMQP property: an event's id)."""
    ids: dict[str, Any] = {}
    reply = request.reply
    if reply is not None and reply.msg_id is not None:
        ids["msg_id"] = reply.msg_id
    if reply is not None and reply.correlation_id is not None:
        ids["correlation_id"] = reply.correlation_id
    if request.method is not None and request.unique_id is not None:
        ids["unique_id"] = request.unique_id
    message_id = request.properties.get("message_id")
    if message_id is not None:
        ids["message_id"] = message_id
    return ids


def log_fields(binding: str, request: protocol.Request | None) -> dict[str, Any]:
    """``extra`` of a log line about a message: with ``use_json`` oslo.log's JSONFormatter
    puts these under the line's ``"extra"`` key (``binding``, ``method``, which is
    ``"event"`` for an event, and the ids of ``log_ids``)."""
    if request is None:
        return {"binding": binding}
    method = request.method if request.method is not None else "event"
    return {"binding": binding, "method": method, **log_ids(request)}


def find_method(handler: Any, request: protocol.Request) -> Any:
    """The handler method for ``request``, by oslo.messaging's rules; raises on refusal.

    Only a public method of the handler's class is ever returned (see ``_public_method``):
    the name comes from the message, so it is never looked up with getattr on the handler.
    """
    method = request.method or ""
    target = getattr(handler, "target", None)
    namespace = getattr(target, "namespace", None)
    accepted = [namespace] + list(getattr(target, "legacy_namespaces", None) or [])
    handler_version = getattr(target, "version", None) or "1.0"
    if request.namespace not in accepted or not version_is_compatible(handler_version,
                                                                      request.version):
        raise UnsupportedVersion(request.version, method)
    if not method.isidentifier() or method.startswith("_") or method in _NOT_RPC:
        raise NoSuchMethod(method)
    func = _public_method(handler, method)
    if func is None:
        raise NoSuchMethod(method)
    return func


def _public_method(handler: Any, name: str) -> Any:
    """``name`` bound to ``handler`` when a class body of its type (or of a base class that
    is not a builtin such as ``object``) defines it with ``def``, ``staticmethod`` or
    ``classmethod``; None for anything else.

    It is looked up in the classes' own namespaces, so an instance attribute (a stored
    ``conf`` is callable: calling it re-reads configuration files), a property, a nested
    class, a callable class attribute and ``object``'s attributes are never called. A
    class with its own ``__getattr__`` (like the ``log`` handler) is asked for the names
    that neither its classes nor the instance define.
    """
    cls = type(handler)
    for klass in cls.__mro__:
        if name in vars(klass):
            raw = vars(klass)[name]
            if klass.__module__ == "builtins" or not isinstance(raw, _METHOD_TYPES):
                return None
            return raw.__get__(handler, cls)
    return _from_getattr_hook(handler, cls, name)


def _from_getattr_hook(handler: Any, cls: type, name: str) -> Any:
    """What the class's own ``__getattr__`` answers for ``name`` (callables only)."""
    hook = next((vars(k)["__getattr__"] for k in cls.__mro__ if "__getattr__" in vars(k)),
                None)
    if not isinstance(hook, types.FunctionType):
        return None
    try:
        own = object.__getattribute__(handler, "__dict__")
    except AttributeError:
        own = {}
    if name in own:  # an instance attribute: data, never a method
        return None
    try:
        func = hook(handler, name)
    except AttributeError:
        return None
    return func if callable(func) else None


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
