"""Hostile messages never hurt the worker: property-based fuzzing of the path every
delivery takes in ``Worker._on_message`` (``decoding.decode``, then
``decisions.refused`` or ``decisions.redelivered`` and ``inflight.run``).

Whatever the body, content type, encoding, headers, properties and delivery info:

* ``decode`` returns a ``Request`` or a ``Rejected`` and never raises, and never
  needs its last-resort ``except Exception`` ("cannot decode: ...");
* a ``Request`` holds only plain JSON in its args and context;
* the dispatcher only ever produces an ``Outcome`` whose reply is valid JSON and
  whose error, if any, is the one the ack policy documents for that request;
* only public methods defined on the handler's class are ever looked up or run.

Deterministic (``derandomize``, no example database) and bounded in time.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import inspect
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

import rpcworker
from rpcworker.config.bindingconf import Binding
from rpcworker.engine.inflight import run
from rpcworker.errors import NoSuchMethod, UnsupportedVersion
from rpcworker.policy import decisions, dispatcher
from rpcworker.policy.outcomes import Action, Outcome
from rpcworker.wire import decoding, envelope, replyformat, xheaders

#: deterministic in CI (derandomize, no example database); about 10 s for the whole file
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_SIZE = 4096

BASE = Binding(
    name="b",
    type="direct",
    handler="fuzz",
    exchange="ex",
    durable=True,
    prefetch_count=1,
    acknowledge="after",
    queue="q",
    routing_keys=("rk",),
)
BINDINGS = [
    BASE,
    dataclasses.replace(BASE, acknowledge="before"),
    dataclasses.replace(BASE, max_retries=2, max_redeliveries=2),
    dataclasses.replace(BASE, max_redeliveries=3, queue_arguments={"x-queue-type": "quorum"}),
]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """The dispatcher logs every handler failure, with its traceback: thousands of them
    here, and the checks do not read them."""
    log = logging.getLogger("rpcworker")
    level = log.level
    log.setLevel(logging.CRITICAL)
    yield
    log.setLevel(level)


# -- the handler -------------------------------------------------------------------------


#: what a message reached that it must never reach (checked empty after every delivery:
#: the dispatcher turns the exception into an Outcome, so it cannot be relied on alone)
SPRUNG: list[str] = []


class Trapped(AssertionError):
    """Something a message must never reach was reached."""


def spring(what: str) -> Trapped:
    SPRUNG.append(what)
    return Trapped(what)


class Trap:
    """Callable, public and reachable with getattr: must never be called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise spring(f"trap called with {args!r} {kwargs!r}")


class HandlerFailed(Exception):
    pass


class FuzzTarget:
    namespace = "ns"
    version = "1.3"
    legacy_namespaces = ["old"]


class FuzzHandler:
    """Every kind of attribute a handler has; only the RPC methods may be called."""

    #: the RPC methods and what they do
    RPC = {
        "ok": "result",
        "fails": "HandlerFailed",
        "reject": "Reject",
        "requeue": "Requeue",
        "unjson": "TypeError",
    }

    attribute = "not callable"
    Nested = Trap  # a class: callable, public, on the class, not a method
    helper = Trap()  # a callable class attribute that is not a method

    def __init__(self) -> None:
        self.conf = Trap()  # a callable instance attribute, as plugins store their conf
        self.calls: list[str] = []
        self.events: list[rpcworker.Message] = []

    @property
    def prop(self) -> Any:
        raise spring("a property was evaluated")

    # positional-only ctxt: any args key (even "ctxt" or "self") is a valid keyword
    def ok(self, ctxt: dict[str, Any], /, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("ok")
        return {"ctxt": ctxt, "kwargs": kwargs}

    def fails(self, ctxt: dict[str, Any], /, **kwargs: Any) -> None:
        self.calls.append("fails")
        raise HandlerFailed("asked to fail")

    def reject(self, ctxt: dict[str, Any], /, **kwargs: Any) -> None:
        self.calls.append("reject")
        raise rpcworker.Reject("no")

    def requeue(self, ctxt: dict[str, Any], /, **kwargs: Any) -> None:
        self.calls.append("requeue")
        raise rpcworker.Requeue("later")

    def unjson(self, ctxt: dict[str, Any], /, **kwargs: Any) -> object:
        self.calls.append("unjson")
        return object()

    def _private(self, ctxt: dict[str, Any], /, **kwargs: Any) -> None:
        raise spring("_private called")

    def __secret(self, ctxt: dict[str, Any], /, **kwargs: Any) -> None:
        raise spring("name-mangled private called")

    def handle_message(self, message: rpcworker.Message) -> None:
        self.events.append(message)


class VersionedFuzzHandler(FuzzHandler):
    target = FuzzTarget()


HANDLER_CLASSES = [FuzzHandler, VersionedFuzzHandler]

# -- strategies ------------------------------------------------------------------------

SPECIAL_NAMES = [
    *FuzzHandler.RPC,
    "attribute",
    "Nested",
    "helper",
    "conf",
    "prop",
    "calls",
    "events",
    "target",
    "handle_message",
    "_private",
    "_FuzzHandler__secret",
    "__init__",
    "__class__",
    "__dict__",
    "__getattribute__",
    "__reduce__",
    "__subclasshook__",
    "__init_subclass__",
    "RPC",
    "mro",
    "",
    " ",
    "ok ",
    "OK",
    "ok\x00",
    "ok.ok",
    "__builtins__",
    "eval",
    "system",
    "open",
    "__import__",
]
METHOD_NAMES = st.one_of(
    st.sampled_from(SPECIAL_NAMES), st.sampled_from(dir(object)), st.text(max_size=12)
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: what a number-like header can be made to hold
HOSTILE_NUMBERS = [
    math.inf,
    -math.inf,
    math.nan,
    2**63 - 1,
    -(2**63),
    10**400,
    decimal.Decimal("1E+30"),
    decimal.Decimal("-Infinity"),
    "9" * 5000,
    "-3",
    " 7 ",
    "0x10",
    "",
    b"12",
    b"\xff",
    True,
]
# what py-amqp can hand over in headers: AMQP field-table values
amqp_scalars = st.one_of(
    json_scalars,
    st.floats(),
    st.binary(max_size=12),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(min_value=datetime.datetime(1970, 1, 1)),
    st.sampled_from(HOSTILE_NUMBERS),
)
amqp_values = st.recursive(
    amqp_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
COUNTERS = [xheaders.RETRIES_HEADER, xheaders.REDELIVERIES_HEADER, xheaders.QUORUM_DELIVERY_COUNT]
HEADER_KEYS = [*COUNTERS, "compression", "x-death"]
headers_st = st.dictionaries(
    st.sampled_from(HEADER_KEYS) | st.text(max_size=8), amqp_values, max_size=5
)
properties_st = st.fixed_dictionaries(
    {},
    optional={
        "reply_to": st.one_of(st.text(max_size=12), amqp_values),
        "correlation_id": st.one_of(st.text(max_size=12), amqp_values),
        "message_id": st.one_of(st.text(max_size=12), amqp_values),
        "content_type": st.text(max_size=12),
        "priority": amqp_values,
    },
)
call_properties = st.fixed_dictionaries(
    {"reply_to": st.text(min_size=1, max_size=12)},
    optional={
        "correlation_id": st.one_of(st.text(max_size=12), amqp_values),
        "message_id": st.one_of(st.text(max_size=12), amqp_values),
    },
)
delivery_info_st = st.fixed_dictionaries(
    {},
    optional={
        "routing_key": amqp_values,
        "exchange": amqp_values,
        "redelivered": amqp_values,
        "delivery_tag": amqp_values,
        "consumer_tag": amqp_values,
    },
)
content_types = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "",
            "APPLICATION/JSON",
            " application/json ;x",
            "application/x-python-serialize",
            "application/x-yaml",
            "application/data",
            "text/plain",
            ";",
        ]
    ),
)
content_encodings = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(
        ["utf-8", "UTF8", " utf-8 ", "", "binary", "latin-1", "gzip", "zlib", "utf-16"]
    ),
)

# structurally plausible requests, so that the deep paths run, not only early refusals
context_st = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
args_st = st.one_of(
    st.dictionaries(
        st.sampled_from(["ctxt", "self", "kwargs", "a"]) | st.text(max_size=8),
        json_values,
        max_size=4,
    ),
    json_values,
)
VERSIONS = st.sampled_from(["1.0", "1.3", "1.2.5", "1.4", "2.0", "1", "bad", "", "1.x"])
NAMESPACES = st.sampled_from(["ns", "old", "other"])
versions = st.one_of(VERSIONS, json_values)
namespaces = st.one_of(NAMESPACES, json_values)
rpc_methods = st.one_of(st.sampled_from(list(FuzzHandler.RPC)), METHOD_NAMES, json_values)
amqp_requests = st.fixed_dictionaries(
    {"method": rpc_methods},
    optional={
        "args": args_st,
        "context": st.one_of(context_st, json_values),
        "namespace": namespaces,
        "version": versions,
    },
)
oslo_requests = st.fixed_dictionaries(
    {"method": rpc_methods},
    optional={
        "args": args_st,
        "namespace": namespaces,
        "version": versions,
        "_msg_id": st.one_of(st.text(max_size=8), json_values),
        "_reply_q": st.one_of(st.text(max_size=8), json_values),
        "_timeout": st.one_of(st.floats(allow_nan=False, allow_infinity=False), json_values),
        "_unique_id": st.one_of(st.text(max_size=8), json_values),
        "_context_user_id": json_values,
        "_context_": json_values,
        "_context_client_timeout": json_values,
        "_context_roles": json_values,
    },
)
oslo_calls = st.builds(
    lambda msg, msg_id, reply_q: {**msg, "_msg_id": msg_id, "_reply_q": reply_q},
    oslo_requests,
    st.text(max_size=8),
    st.text(min_size=1, max_size=8),
)


def _inner_text(inner: Any) -> st.SearchStrategy[Any]:
    text = json.dumps(inner)
    return st.one_of(
        st.just(text),
        st.integers(0, len(text)).map(lambda i: text[:i]),
        st.just(text.replace("}", ', "x": NaN}', 1)),
        json_values,
    )


oslo_envelopes = st.builds(
    lambda version, inner: {envelope.OSLO_VERSION_KEY: version, envelope.OSLO_MESSAGE_KEY: inner},
    st.one_of(
        st.just("2.0"), st.sampled_from(["2.1", "1.0", "2", "2.00", "3.0", "2.x"]), json_values
    ),
    st.one_of(oslo_requests, json_values).flatmap(_inner_text),
)
documents = st.one_of(amqp_requests, oslo_requests, oslo_envelopes, json_values)


def _texts(doc: Any) -> st.SearchStrategy[str]:
    text = json.dumps(doc)
    return st.one_of(
        st.just(text),
        st.integers(0, len(text)).map(lambda i: text[:i]),  # truncated
        st.just(text.replace("}", ', "nan": NaN}', 1)),  # JSON constants are refused
        st.just(text.replace("}", ', "inf": -Infinity}', 1)),
        st.just(" \n" + text + "\t"),
        st.just(text + "garbage"),
    )


json_texts = documents.flatmap(_texts)
deep = st.integers(1, 20000).map(lambda n: "[" * n + "]" * n) | st.integers(1, 20000).map(
    lambda n: '{"a":' * n + "1" + "}" * n
)
bodies = st.one_of(
    json_texts.map(lambda t: t.encode("utf-8")),
    json_texts,  # py-amqp hands over str when the message names a content encoding
    json_texts.map(lambda t: t.encode("utf-8") + b"\xff\xfe"),  # invalid UTF-8
    json_texts.map(lambda t: t.encode("utf-16")),
    deep.map(str.encode),
    st.binary(max_size=64),
    st.text(max_size=64),
    st.just(b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x06method\x94\x8c\x02ok\x94s."),
    st.integers(MAX_SIZE - 2, MAX_SIZE + 2).map(
        lambda n: json.dumps({"method": "ok", "args": {"pad": "x" * n}}).encode()[:n]
    ),
)


@st.composite
def deliveries(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments of ``decoding.decode`` for one delivery."""
    body = draw(bodies)
    plausible = draw(st.booleans())
    return {
        "body": body,
        "content_type": draw(
            st.sampled_from([None, "application/json"]) if plausible else content_types
        ),
        "content_encoding": draw(
            st.sampled_from([None, "utf-8"]) if plausible else content_encodings
        ),
        "headers": draw(headers_st),
        "properties": draw(properties_st),
        "delivery_info": draw(delivery_info_st),
        "max_size": draw(st.sampled_from([None, MAX_SIZE])),
    }


# -- checks -----------------------------------------------------------------------------


def note(text: str) -> None:
    """Count what the examples exercised (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(text)


DOCUMENTED_REFUSALS = ("NoSuchMethod", "UnsupportedVersion")


def assert_plain_json(value: Any, where: str) -> None:
    """Only what json.loads builds: dict (str keys), list, str, int, finite float, bool, None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), (where, key)
            assert_plain_json(item, where)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item, where)
    elif isinstance(value, float):
        assert math.isfinite(value), (where, value)
    else:
        assert value is None or type(value) in (str, int, bool), (where, type(value))


def assert_request(req: decoding.Request, oslo: bool) -> None:
    """``oslo``: the body was an oslo envelope."""
    if req.reply is not None:
        assert req.method is not None and req.reply.style == ("oslo" if oslo else "amqp")
    assert req.method is None or (isinstance(req.method, str) and req.method)
    assert isinstance(req.args, dict) and isinstance(req.context, dict)
    assert_plain_json(req.args, "args")
    assert_plain_json(req.context, "context")
    assert_plain_json(req.body, "body")
    assert req.namespace is None or isinstance(req.namespace, str)
    assert isinstance(req.version, str)
    assert req.unique_id is None or isinstance(req.unique_id, str)
    assert isinstance(req.routing_key, str) and isinstance(req.exchange, str)
    assert isinstance(req.redelivered, bool)
    if req.monitor_timeout is not None:
        assert req.reply is not None and req.monitor_timeout > 0
    if oslo and req.method is not None:  # never taken from a _context_
        assert req.context["client_timeout"] == (req.body.get("_timeout") if req.reply else None)
    assert_route(req.reply)


def assert_route(route: decoding.ReplyRoute | None) -> None:
    if route is None:
        return
    assert route.style in ("oslo", "amqp")
    assert isinstance(route.routing_key, str) and route.routing_key
    assert route.msg_id is None or isinstance(route.msg_id, str)
    assert route.correlation_id is None or isinstance(route.correlation_id, str)
    if route.style == "oslo":
        assert route.msg_id is not None


def reply_error(outcome: Outcome) -> str | None:
    """The error class the reply carries (None: a result, or no reply)."""
    if outcome.reply is None:
        return None
    body = json.loads(outcome.reply.body)
    if "oslo.message" in body:
        inner = json.loads(body["oslo.message"])
        assert inner["ending"] is True
        return None if inner["failure"] is None else json.loads(inner["failure"])["class"]
    return body["error"]["type"] if "error" in body else None


def assert_outcome(outcome: Any, binding: Binding) -> Outcome:
    assert isinstance(outcome, Outcome), outcome
    assert isinstance(outcome.action, Action)
    assert outcome.reason is None or isinstance(outcome.reason, str)
    if binding.ack_before:
        assert outcome.action in (Action.NONE, Action.DEAD_LETTER, Action.COUNT, Action.ACK)
    if outcome.reply is not None:
        assert isinstance(outcome.reply, replyformat.Reply) and outcome.reply.routing_key
        reply_error(outcome)  # valid JSON in the documented shape
    return outcome


def expected_error(handler: Any, req: decoding.Request) -> str | None:
    """What the ack policy says the caller gets (None: a result)."""
    target = getattr(type(handler), "target", None)
    accepted = [getattr(target, "namespace", None), *getattr(target, "legacy_namespaces", [])]
    version = getattr(target, "version", "1.0")
    if req.namespace not in accepted or not dispatcher.version_is_compatible(version, req.version):
        return "UnsupportedVersion"
    if req.method not in FuzzHandler.RPC:
        return "NoSuchMethod"
    outcome = FuzzHandler.RPC[req.method]
    return None if outcome == "result" else outcome


def check_dispatch(handler: FuzzHandler, binding: Binding, req: decoding.Request) -> None:
    SPRUNG.clear()
    early = decisions.redelivered(binding, req)
    if early is not None:
        note(f"on_receipt: {early.action.value}")
        assert_outcome(early, binding)
        assert early.action in (Action.COUNT, Action.DEAD_LETTER)
        if early.action is Action.DEAD_LETTER and req.reply is not None:
            assert reply_error(early) == "PoisonMessage"
    outcome = assert_outcome(run(handler, binding, req), binding)
    if not req.is_rpc:
        assert outcome.action in (Action.ACK, Action.NONE) and handler.events
        return
    expected = expected_error(handler, req)
    kind = "event" if req.method is None else "call" if req.is_call else "cast"
    note(f"{kind}: {expected or 'result'}")
    if req.reply is not None:
        assert reply_error(outcome) == expected, (req, outcome)
    ran = [] if expected in DOCUMENTED_REFUSALS else [req.method]
    assert handler.calls == ran and not SPRUNG, SPRUNG
    if expected not in (None, "TypeError"):  # TypeError: the result is not JSON
        assert outcome.reason is not None and outcome.reason.startswith(f"{expected}: ")
    if expected in DOCUMENTED_REFUSALS and not binding.ack_before:
        assert outcome.action is (Action.ACK if req.is_call else Action.DEAD_LETTER)


def _is_oslo(body: bytes | str) -> bool:
    """Whether ``body`` (decoded without refusal) is an oslo envelope."""
    data = envelope.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    return isinstance(data, dict) and envelope.OSLO_VERSION_KEY in data


def run_delivery(delivery: dict[str, Any], binding: Binding, handler_cls: type) -> Any:
    """What Intake.on_message does with one delivery, checked step by step."""
    result = decoding.decode(**delivery)
    assert isinstance(result, decoding.Request | decoding.Rejected), result
    if isinstance(result, decoding.Rejected):
        assert isinstance(result.reason, str) and result.reason
        assert not result.reason.startswith("cannot decode"), result.reason  # a missed case
        assert_route(result.reply)
        note(f"refused: {result.reason.split(':')[0][:40]}")
        outcome = assert_outcome(decisions.refused(result), binding)
        assert outcome.action is Action.DEAD_LETTER
        assert reply_error(outcome) == ("InvalidRequest" if result.reply else None)
        return result
    assert_request(result, oslo=_is_oslo(delivery["body"]))
    check_dispatch(handler_cls(), binding, result)
    return result


# -- properties ----------------------------------------------------------------------------


@FUZZ
@given(
    delivery=deliveries(),
    binding=st.sampled_from(BINDINGS),
    handler_cls=st.sampled_from(HANDLER_CLASSES),
)
def test_any_delivery_decodes_and_dispatches_to_a_documented_outcome(
    delivery: dict[str, Any], binding: Binding, handler_cls: type
) -> None:
    run_delivery(delivery, binding, handler_cls)


@FUZZ
@given(
    doc=st.one_of(amqp_requests, st.one_of(oslo_requests, oslo_calls).map(envelope.envelope)),
    properties=st.one_of(properties_st, call_properties),
    binding=st.sampled_from(BINDINGS),
    handler_cls=st.sampled_from(HANDLER_CLASSES),
    redelivered=st.booleans(),
    headers=headers_st,
)
def test_well_formed_requests_reach_the_dispatcher(
    doc: Any,
    properties: dict[str, Any],
    binding: Binding,
    handler_cls: type,
    redelivered: bool,
    headers: dict[str, Any],
) -> None:
    """Valid JSON in the right content type: the deep paths (not only early refusals)."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    run_delivery(
        {
            "body": body,
            "content_type": "application/json",
            "headers": headers,
            "properties": properties,
            "delivery_info": {"redelivered": redelivered},
        },
        binding,
        handler_cls,
    )


@FUZZ
@given(
    name=st.sampled_from(COUNTERS),
    value=st.one_of(st.sampled_from(HOSTILE_NUMBERS), amqp_values),
    binding=st.sampled_from(BINDINGS),
    method=st.sampled_from(["fails", "requeue", "ok"]),
    call=st.booleans(),
)
def test_counter_headers_hold_anything(
    name: str, value: Any, binding: Binding, method: str, call: bool
) -> None:
    """The retry/redelivery counters come from the message: any value is a count (or 0)."""
    req = decoding.Request(
        body={},
        method=method,
        headers={name: value},
        redelivered=True,
        reply=decoding.ReplyRoute("amqp", "rq") if call else None,
    )
    count = xheaders.int_header(req.headers, name)
    assert isinstance(count, int) and count >= 0
    check_dispatch(FuzzHandler(), binding, req)


@FUZZ
@given(method=METHOD_NAMES, handler_cls=st.sampled_from(HANDLER_CLASSES))
def test_find_method_only_returns_public_methods_of_the_handler_class(
    method: str, handler_cls: type
) -> None:
    handler = handler_cls()
    version = "1.3" if handler_cls is VersionedFuzzHandler else "1.0"
    namespace = "ns" if handler_cls is VersionedFuzzHandler else None
    req = decoding.Request(body={}, method=method, version=version, namespace=namespace)
    try:
        func = dispatcher.find_method(handler, req)
    except NoSuchMethod:
        assert method not in FuzzHandler.RPC
        return
    assert method in FuzzHandler.RPC
    assert_method_of(handler, method, func)


def assert_method_of(handler: Any, name: str, func: Any) -> None:
    """``func`` is ``name``, bound to ``handler``, defined in a class body of its type
    (not object's, not an instance attribute, not a property, not a nested class)."""
    assert not name.startswith("_") and name not in ("target", "handle_message")
    assert inspect.ismethod(func) and func.__self__ is handler, func
    owners = [k for k in type(handler).__mro__ if k is not object and name in vars(k)]
    assert owners and vars(owners[0])[name] is func.__func__
    assert inspect.isfunction(func.__func__)


@FUZZ
@given(
    method=METHOD_NAMES,
    version=st.one_of(VERSIONS, st.text(max_size=8)),
    namespace=st.one_of(st.none(), NAMESPACES, st.text(max_size=8)),
)
def test_find_method_refuses_with_documented_errors_only(
    method: str, version: str, namespace: str | None
) -> None:
    """Any name, version and namespace a decoded Request can hold."""
    req = decoding.Request(body={}, method=method, version=version, namespace=namespace)
    for handler in (FuzzHandler(), VersionedFuzzHandler()):
        try:
            func = dispatcher.find_method(handler, req)
        except (NoSuchMethod, UnsupportedVersion):
            continue
        assert_method_of(handler, method, func)


class Dynamic:
    """A handler that answers any public name through ``__getattr__`` (like ``log``)."""

    def __init__(self) -> None:
        self.conf = Trap()

    def known(self, ctxt: dict[str, Any]) -> str:
        return "known"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda ctxt, **kwargs: f"dynamic {name}"


@FUZZ
@given(method=METHOD_NAMES)
def test_a_class_getattr_answers_only_names_the_handler_does_not_have(method: str) -> None:
    handler = Dynamic()
    req = decoding.Request(body={}, method=method)
    try:
        func = dispatcher.find_method(handler, req)
    except NoSuchMethod:
        assert (
            not method.isidentifier()
            or method.startswith("_")
            or method in ("conf", "target", "handle_message")
            or any(method in vars(k) for k in type(handler).__mro__)
        )
        return
    assert method.isidentifier() and not method.startswith("_")
    if method == "known":
        assert_method_of(handler, method, func)
    else:  # asked only for names neither the classes nor the instance have
        assert func({}) == f"dynamic {method}"
        assert not any(method in vars(k) for k in type(handler).__mro__)
        assert method not in vars(handler)


@pytest.mark.parametrize(
    "name",
    [
        "conf",
        "helper",
        "Nested",
        "prop",
        "attribute",
        "calls",
        "RPC",
        "_private",
        "__init__",
        "__class__",
        "mro",
    ],
)
def test_no_trap_is_ever_reached(name: str) -> None:
    """The names the properties must refuse, each at least once whatever hypothesis draws."""
    handler = VersionedFuzzHandler()
    req = decoding.Request(
        body={}, method=name, version="1.0", namespace="ns", reply=decoding.ReplyRoute("amqp", "rq")
    )
    with pytest.raises(NoSuchMethod):
        dispatcher.find_method(handler, req)
    outcome = run(handler, BASE, req)
    assert reply_error(outcome) == "NoSuchMethod" and handler.calls == [] and not SPRUNG


def test_the_checks_accept_every_documented_outcome() -> None:
    """Sanity of the oracle: one delivery of each RPC method and an event pass the checks."""
    for method in FuzzHandler.RPC:
        for props in ({}, {"reply_to": "rq", "correlation_id": "c"}):
            body = json.dumps({"method": method, "args": {"ctxt": 1, "self": 2}}).encode()
            for binding in BINDINGS:
                req = run_delivery({"body": body, "properties": props}, binding, FuzzHandler)
                assert isinstance(req, decoding.Request)
    run_delivery({"body": b'{"event": 1}'}, BASE, FuzzHandler)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"method": "ok", "args": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    ],
)
def test_nesting_deeper_than_the_recursion_limit_is_refused_with_a_reason(body: bytes) -> None:
    """It used to reach decode's last-resort handler ("cannot decode: RecursionError"),
    which drops the reply route: a caller waited for its timeout instead of an error."""
    props = {"reply_to": "rq", "correlation_id": "c"}
    result = decoding.decode(body, "application/json", None, {}, props, {})
    assert result == decoding.Rejected(
        "body is not JSON: nested too deeply", decoding.ReplyRoute("amqp", "rq", correlation_id="c")
    )


def test_nesting_too_deep_in_an_oslo_envelope_is_refused_with_a_reason() -> None:
    inner = '{"method": "ok", "args": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
    body = json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode()
    result = decoding.decode(body, "application/json")
    assert result == decoding.Rejected(
        "oslo envelope: oslo.message is not JSON: nested too deeply", None
    )
