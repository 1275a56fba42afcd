"""The one exception tree of rpcworker.

Two families live here:

* errors of the daemon itself (``ConfigError``, ``PluginError``), which stop
  it with exit status 2 before it touches the broker;
* exceptions a *handler* raises to choose what happens to the message it is
  processing (``Reject``, ``Requeue``) and the dispatch failures that are sent
  back to RPC callers (``NoSuchMethod``, ``UnsupportedVersion``), named and
  worded as oslo.messaging names and words them.
"""

from __future__ import annotations


class RPCWorkerError(Exception):
    """Base of every exception defined by rpcworker."""


class ConfigError(RPCWorkerError):
    """The configuration is unusable. Exit status 2.

    ``str()`` is one line naming the group, the option and what is wrong.
    """

    def __init__(self, group: str | None, option: str | None, reason: str) -> None:
        self.group = group
        self.option = option
        self.reason = reason
        super().__init__(self.line())

    def line(self) -> str:
        where = []
        if self.group:
            where.append(f"[{self.group}]")
        if self.option:
            where.append(self.option)
        prefix = " ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class PluginError(RPCWorkerError):
    """A handler plugin is missing or failed to load. Exit status 2."""


class StopRequested(RPCWorkerError):
    """Raised inside the consumer loop to leave a blocking wait on shutdown."""


# -- outcomes a handler may choose ------------------------------------------


class HandlerOutcome(RPCWorkerError):
    """Base of the exceptions a handler raises to choose the message's fate."""


class Reject(HandlerOutcome):
    """Reject the message now, without requeue (dead-lettered where the queue has a DLX).

    On an RPC call the caller still gets the error as a remote exception.
    """


class Requeue(HandlerOutcome):
    """Try the message again later (a cast or event), after the binding's retry delay.

    Bounded by the binding's ``max_retries``: then the message is dead-lettered, so
    a handler that always raises ``Requeue`` never makes a message loop forever.
    On a call the caller gets the error.
    """


class HandlerTimeout(RPCWorkerError):
    """The handler ran longer than the binding's ``handler_timeout``."""


class PoisonMessage(RPCWorkerError):
    """The message was redelivered more than ``max_redeliveries`` times."""


# -- dispatch failures sent to RPC callers ------------------------------------


class DispatchError(RPCWorkerError):
    """A request could not be routed to a handler method."""

    #: module name put on the wire, as oslo.messaging's dispatcher does
    wire_module = "oslo_messaging.rpc.dispatcher"


class NoSuchMethod(DispatchError, AttributeError):
    """The handler has no public method of that name."""

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(f"Endpoint does not support RPC method {method}")


class UnsupportedVersion(DispatchError):
    """No handler target accepts the requested namespace/version."""

    def __init__(self, version: str, method: str | None = None) -> None:
        self.version = version
        self.method = method
        msg = f"Endpoint does not support RPC version {version}"
        if method:
            msg += f". Attempted method: {method}"
        super().__init__(msg)


class NoHandleMessage(DispatchError):
    """An event (a message without a method) reached a handler without ``handle_message``."""


def oneline(exc: BaseException | None, *, with_type: bool = True) -> str:
    """``exc`` as one log-safe line: ``Type: text`` (``with_type``) or just the text, the
    whitespace of a multi-line message folded; the type name alone when it says nothing."""
    if exc is None:
        return "unknown error"
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text
