"""The dispatcher: a request -> the handler method (oslo's namespace and version rules,
only public methods of the handler's class), and the call. The decisions about what
happens to the message are ``test_policy``'s."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from rpcworker.config.bindingconf import Binding
from rpcworker.engine.inflight import run
from rpcworker.errors import NoSuchMethod
from rpcworker.policy import decisions, dispatcher, outcomes
from rpcworker.policy.outcomes import Action
from rpcworker.wire import decoding
from tests.fakes import AFTER, RETRYING, Handler, Versioned, error_type, req


def unknown_method(
    handler: Any, binding: Binding, request: decoding.Request
) -> outcomes.Outcome | None:
    """What the policy decides on receipt for a method the handler may not have."""
    error = dispatcher.unknown(handler, request)
    return None if error is None else decisions.unknown_method(request, error)


@pytest.mark.parametrize(
    "method", ["nope", "_secret", "__init__", "attribute", "handle_message", "__class__"]
)
def test_no_such_method(method: str) -> None:
    out = run(Handler(), AFTER, req(method))
    assert out.action is Action.ACK and error_type(out) == "NoSuchMethod"
    cast = run(Handler(), RETRYING, req(method, call=False))
    assert cast.action is Action.DEAD_LETTER  # retrying cannot help


def test_oslo_failure_module_for_dispatch_errors() -> None:
    route = decoding.ReplyRoute("oslo", "rq", msg_id="m")
    out = run(Handler(), AFTER, decoding.Request(body={}, method="nope", reply=route))
    assert out.reply is not None
    inner = json.loads(json.loads(out.reply.body)["oslo.message"])
    failure = json.loads(inner["failure"])
    assert failure["class"] == "NoSuchMethod"
    assert failure["module"] == "oslo_messaging.rpc.dispatcher"
    assert failure["message"] == "Endpoint does not support RPC method nope"


@pytest.mark.parametrize(
    "namespace, version, ok",
    [
        ("ns", "1.0", True),
        ("ns", "1.3", True),
        ("ns", "1.2.5", True),
        ("old", "1.1", True),
        ("ns", "1.4", False),
        ("ns", "2.0", False),
        ("ns", "0.9", False),
        (None, "1.0", False),
        ("other", "1.0", False),
        ("ns", "bad", False),
        ("ns", "1", False),
    ],
)
def test_version_and_namespace_rules(namespace: str | None, version: str, ok: bool) -> None:
    out = run(
        Versioned(), AFTER, req("add", namespace=namespace, version=version, args={"a": 1, "b": 1})
    )
    assert out.reply is not None
    body = json.loads(out.reply.body)
    if ok:
        assert body == {"result": 2}
    else:
        assert body["error"]["type"] == "UnsupportedVersion"
        assert f"does not support RPC version {version}" in body["error"]["message"]


def test_handler_without_target_is_namespace_none_version_1_0() -> None:
    assert json.loads(
        run(Handler(), AFTER, req("add", version="1.0", args={"a": 0, "b": 0})).reply.body
    ) == {"result": 0}  # type: ignore[union-attr]
    out = run(Handler(), AFTER, req("add", version="1.1"))
    assert error_type(out) == "UnsupportedVersion"


def test_wrong_arguments_are_a_remote_type_error() -> None:
    out = run(Handler(), AFTER, req("add", args={"a": 1}))
    assert out.action is Action.ACK and error_type(out) == "TypeError"


def test_events_go_to_handle_message() -> None:
    h = Handler()
    out = run(h, AFTER, decoding.Request(body={"e": 1}, routing_key="a.b", exchange="ex"))
    assert out == outcomes.Outcome(Action.ACK, None)
    assert h.events[0].body == {"e": 1} and h.events[0].routing_key == "a.b"


# -- only public methods of the handler's class are callable (security audit) -----------


class Callable_:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a callable attribute was called")


class Attributes(Handler):
    """Attributes a message must never reach, next to real methods."""

    nested = Callable_  # a class: callable
    helper = Callable_()  # a callable object on the class

    def __init__(self) -> None:
        super().__init__()
        self.conf = Callable_()  # plugins keep their ConfigOpts, which is callable

    @property
    def prop(self) -> Any:
        raise AssertionError("a property was evaluated")

    @functools.cached_property
    def cached(self) -> Any:  # a non-data descriptor: __get__ would run it
        raise AssertionError("a cached_property was evaluated")

    @staticmethod
    def static(ctxt: dict[str, Any]) -> str:
        return "static"

    @classmethod
    def klass(cls, ctxt: dict[str, Any]) -> str:
        return cls.__name__


class DictHandler(dict):  # type: ignore[type-arg]
    def ping(self, ctxt: dict[str, Any]) -> str:
        return "pong"


@pytest.mark.parametrize(
    "method",
    [
        "conf",
        "nested",
        "helper",
        "prop",
        "cached",
        "attribute",
        "events",
        "mro",
        "ok\n2024-01-01 CRITICAL forged",
        "a b",
        "add.x",
        "",
    ],
)
def test_only_methods_defined_in_the_class_body_are_callable(method: str) -> None:
    with pytest.raises(NoSuchMethod):
        dispatcher.find_method(Attributes(), req(method))
    out = run(Attributes(), AFTER, req(method))
    assert out.action is Action.ACK and error_type(out) == "NoSuchMethod"


def test_static_and_class_methods_are_methods() -> None:
    assert json.loads(run(Attributes(), AFTER, req("static")).reply.body) == {"result": "static"}  # type: ignore[union-attr]
    assert json.loads(run(Attributes(), AFTER, req("klass")).reply.body) == {"result": "Attributes"}  # type: ignore[union-attr]
    assert dispatcher.find_method(Attributes(), req("add"))(None, a=1, b=2) == 3  # inherited


def test_attributes_of_builtin_bases_are_not_methods() -> None:
    h = DictHandler()
    assert dispatcher.find_method(h, req("ping"))({}) == "pong"
    for name in ("keys", "clear", "pop", "update", "fromkeys"):
        with pytest.raises(NoSuchMethod):
            dispatcher.find_method(h, req(name))


def test_the_builtin_handlers_never_expose_their_conf() -> None:
    """`conf` is a ConfigOpts: calling it clears and re-reads the configuration from any
    file the message names (and its parse error quotes the file to the caller)."""
    from oslo_config import cfg

    from rpcworker.handlers.echo import EchoHandler
    from rpcworker.handlers.log import LogHandler

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt("marker", default="untouched"))
    conf([], default_config_files=[])
    attack = req("conf", args={"default_config_files": ["/etc/hostname"], "project": "x"})
    for handler in (EchoHandler(conf), LogHandler(conf)):
        with pytest.raises(NoSuchMethod):
            dispatcher.find_method(handler, attack)
        out = run(handler, AFTER, attack)
        assert error_type(out) == "NoSuchMethod"
    assert conf.marker == "untouched" and conf.config_file == []
    # what they do serve still works; the log handler answers any other public name
    assert dispatcher.find_method(EchoHandler(conf), req("ping"))({}) == "pong"
    assert dispatcher.find_method(LogHandler(conf), req("anything"))({}, x=1) is None
    for name in ("_x", "target", "handle_message", "a-b"):
        with pytest.raises(NoSuchMethod):
            dispatcher.find_method(LogHandler(conf), req(name))


def test_refusal_log_lines_cannot_be_forged() -> None:
    from rpcworker.wire.logfields import printable as _printable

    assert _printable("method a\nERROR forged line") == "method a\\nERROR forged line"
    assert _printable("plain reason: 'x'") == "plain reason: 'x'"


def test_unknown_method_caches_only_what_it_found() -> None:
    h = Handler()
    assert unknown_method(h, AFTER, req("add")) is None
    assert (id(h), Handler, "add", None, "1.0") in dispatcher._FOUND
    assert unknown_method(h, AFTER, req("nope")) is not None
    assert not any(key[2] == "nope" for key in dispatcher._FOUND)

    class Dynamic:
        names = {"ping"}

        def __getattr__(self, name: str) -> Any:
            if name in self.names:
                return lambda ctxt: "pong"
            raise AttributeError(name)

    d = Dynamic()
    assert unknown_method(d, AFTER, req("ping")) is None
    d.names = set()  # a __getattr__ handler may stop answering: never cached
    assert unknown_method(d, AFTER, req("ping")) is not None
