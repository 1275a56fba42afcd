"""``--check-config --broker``: compare what the configuration would declare with what
exists on the broker, without creating or deleting anything.

Every entity is looked up with a passive declare on a throwaway channel (a 404 closes
only that channel). An entity that exists is declared again, on another throwaway
channel, with the configured type, flags and arguments: equal is a no-op, different is
the 406 PRECONDITION_FAILED the worker would get at start-up (with the broker's reason).
It exists already, so that declaration creates nothing. Per-process and exclusive
queues are skipped: they belong to one connection and never exist beforehand.

The report starts with the broker's product and version, and flags every planned
queue that a RabbitMQ 4 broker deprecates (``transient_nonexcl_queues``: non-durable,
non-exclusive), with the option that avoids it, whatever the broker's version: a 4.x
node that denies the feature refuses it (541), and a later major version removes it.

When the RabbitMQ management API answers (http://HOST:15672 by default, same
credentials), the actual flags and arguments are read from it and every difference is
named; otherwise the report says so once and relies on the declare test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import kombu
from kombu import Exchange, Queue

from rpcworker.amqp import broker, deprecations, topology, transport
from rpcworker.config.bindingconf import Binding

MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT = 3.0

EXISTS = "exists"
CREATE = "create"
CONFLICT = "conflict"
SKIPPED = "skipped"

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '.*' in vhost '.*': "
    r"received (?P<received>.+?) but current is (?P<current>.+)$"
)
_VALUE = re.compile(r"^(?:the value )?'(?P<value>.*?)'(?: of type '[^']*')?$")


@dataclasses.dataclass(frozen=True)
class Expected:
    """One exchange or queue as the configuration would declare it."""

    kind: str  # exchange | queue
    name: str
    bindings: tuple[str, ...]  # names of the bindings that declare it
    durable: bool
    auto_delete: bool
    type: str = ""  # exchange type
    exclusive: bool = False
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: why it is not checked (per-process / exclusive queues)
    skip: str | None = None

    @property
    def queue_type(self) -> str:
        return str(self.arguments.get("x-queue-type", "classic"))


@dataclasses.dataclass(frozen=True)
class Difference:
    """One flag or argument that differs between the configuration and the broker."""

    field: str  # durable, auto_delete, type, x-queue-type, x-max-length, ...
    configured: Any
    actual: Any

    def __str__(self) -> str:
        return f"{self.field}: configured {_show(self.configured)}, broker has {_show(self.actual)}"


@dataclasses.dataclass(frozen=True)
class Finding:
    """The outcome for one expected entity."""

    entity: Expected
    status: str  # exists | create | conflict | skipped
    reason: str = ""  # the broker's 406/405 reply text, or why it was skipped
    differences: tuple[Difference, ...] = ()
    migration: tuple[str, ...] = ()
    messages: int | None = None  # messages in a queue (management API only)

    def lines(self) -> list[str]:
        e = self.entity
        owner = ", ".join(e.bindings)
        head = f"{e.kind} {e.name!r} (binding {owner})"
        if self.status == EXISTS:
            note = "; ".join(str(d) for d in self.differences)
            extra = f" (accepted by the broker, but differs: {note})" if note else ""
            return [f"  ok        {head}: exists as configured{extra}"]
        if self.status == CREATE:
            return [f"  create    {head}: {_summary(e)}"]
        if self.status == SKIPPED:
            return [f"  skipped   {head}: {self.reason}"]
        out = [f"  CONFLICT  {head}: the worker would get {self.reason}"]
        for d in self.differences:
            out.append(f"    differs: {d}")
        if self.messages:
            out.append(f"    the queue holds {self.messages} message(s)")
        for step in self.migration:
            out.append(f"    migrate: {step}")
        return out


@dataclasses.dataclass(frozen=True)
class BrokerCheck:
    """The result of ``check()``; ``cmd/daemon.py`` prints it."""

    broker: str  # the masked URL connected to (or tried)
    findings: tuple[Finding, ...] = ()
    management: str = ""  # one line: what the management API gave
    unreachable: str | None = None  # one line, when the broker could not be reached
    version: str = ""  # the broker's product and version, as it announced them
    #: one line per planned entity a RabbitMQ 4 broker deprecates, with its fix
    deprecated: tuple[str, ...] = ()

    @property
    def conflicts(self) -> list[Finding]:
        return [f for f in self.findings if f.status == CONFLICT]

    @property
    def to_create(self) -> list[Finding]:
        return [f for f in self.findings if f.status == CREATE]

    def lines(self) -> list[str]:
        out = [f"broker check against {self.broker}:"]
        if self.version:
            out.append(f"  broker: {self.version}")
        if self.management:
            out.append(f"  {self.management}")
        for f in self.findings:
            out.extend(f.lines())
        if self.conflicts:
            out.append(
                f"broker: {len(self.conflicts)} conflict(s); the worker would fail to "
                "declare them (406 PRECONDITION_FAILED) until they are migrated"
            )
        else:
            out.append(f"broker: consistent ({len(self.to_create)} to create at start-up)")
        for line in self.deprecated:
            out.append(f"  DEPRECATED {line}")
        if self.deprecated:
            out.append(
                "broker: planned queues use a feature RabbitMQ 4 deprecates; a node with "
                "deprecated_features.permit.transient_nonexcl_queues = false refuses them "
                "(the worker exits 2)"
            )
        return out


# -- what the configuration declares -------------------------------------------------


def expected_entities(parsed: list[Binding]) -> list[Expected]:
    """Every exchange and queue the worker would declare for ``parsed``, in order, each
    named once (an exchange shared by several bindings lists all of them)."""
    found: dict[tuple[str, str], Expected] = {}

    def add(e: Expected) -> None:
        key = (e.kind, e.name)
        if key in found:
            old = found[key]
            if e.bindings[0] not in old.bindings:
                found[key] = dataclasses.replace(old, bindings=old.bindings + e.bindings)
        else:
            found[key] = e

    for b in parsed:
        topo = topology.build(b, instance_id=_PER_PROCESS)
        for q in topo.queues:
            for ex in _exchanges_of(q):
                add(_exchange(ex, b.name))
            per_process = q.name in topo.transient or _PER_PROCESS in q.name
            add(_queue(q, b.name, per_process))
            if not per_process:
                for dq in topology.retry_queues(b, q):
                    add(_queue(dq, b.name, False))
        exchange, parking = topology.parking_lot(b)
        if exchange is not None:
            add(_exchange(exchange, b.name))
        if parking is not None:
            add(_queue(parking, b.name, False))
    return list(found.values())


_PER_PROCESS = "<per-process id>"


def deprecated_entities(parsed: list[Binding]) -> list[str]:
    """One line per binding and fix: the queues the worker would declare that use a
    feature RabbitMQ 4 deprecates, and the option that avoids it."""
    by_name = {b.name: b for b in parsed}
    fixes: dict[tuple[str, str, str], list[str]] = {}
    for e in expected_entities(parsed):
        if e.kind != "queue" or e.durable or e.exclusive:
            continue
        b = by_name[e.bindings[0]]
        group, option, _ = deprecations.fix_for(b, e.name, deprecations.TRANSIENT_QUEUES)
        fixes.setdefault((b.name, group, option), []).append(e.name)
    return [
        f"binding {name}: {len(queues)} non-durable, non-exclusive queue(s) "
        f"({deprecations.TRANSIENT_QUEUES}: {', '.join(queues)}); avoided by "
        f"[{group}] {option} = true"
        for (name, group, option), queues in fixes.items()
    ]


def server_version(conn: kombu.Connection) -> str:
    """``RabbitMQ 4.3.6`` (the product and version the broker announced), or ""."""
    props = getattr(conn.connection, "server_properties", None) or {}
    product, version = props.get("product", ""), props.get("version", "")
    return f"{product} {version}".strip()


def _exchanges_of(q: Queue) -> list[Exchange]:
    exchanges = [bd.exchange for bd in (q.bindings or ()) if bd.exchange is not None]
    if q.exchange is not None:
        exchanges.append(q.exchange)
    return [ex for ex in exchanges if ex.name and not ex.name.startswith("amq.")]


def _exchange(ex: Exchange, binding: str) -> Expected:
    return Expected(
        kind="exchange",
        name=ex.name,
        bindings=(binding,),
        type=ex.type,
        durable=bool(ex.durable),
        auto_delete=bool(ex.auto_delete),
        arguments=dict(getattr(ex, "arguments", None) or {}),
    )


def _queue(q: Queue, binding: str, per_process: bool) -> Expected:
    skip = None
    if per_process:
        skip = "per-process queue, named and declared by each worker process at start-up"
    elif q.exclusive:
        skip = "exclusive queue: it belongs to the one connection that declares it"
    return Expected(
        kind="queue",
        name=q.name,
        bindings=(binding,),
        durable=bool(q.durable),
        auto_delete=bool(q.auto_delete),
        exclusive=bool(q.exclusive),
        arguments=dict(getattr(q, "queue_arguments", None) or {}),
        skip=skip,
    )


# -- the management API --------------------------------------------------------------


class Management:
    """A minimal RabbitMQ management API client (GET only)."""

    def __init__(
        self, url: str, userid: str, password: str, timeout: float = MANAGEMENT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        token = base64.b64encode(f"{userid}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self.timeout = timeout

    def get(self, path: str) -> Any | None:
        """The decoded JSON of ``path``; None on 404. Raises OSError/ValueError otherwise."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": self._auth, "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def probe(self) -> str | None:
        """None when the API answers, else why not (one phrase)."""
        try:
            overview = self.get("/api/overview")
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:
            return " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
        if not isinstance(overview, dict):
            return "not a RabbitMQ management API (unexpected /api/overview)"
        return None

    def exchange(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.get(f"/api/exchanges/{quote(vhost, safe='')}/{quote(name, safe='')}")

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.get(f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")


def compare(e: Expected, actual: Mapping[str, Any]) -> list[Difference]:
    """What differs between ``e`` and the management API's JSON of the entity."""
    diffs: list[Difference] = []
    if e.kind == "exchange" and actual.get("type") != e.type:
        diffs.append(Difference("type", e.type, actual.get("type")))
    for flag in ("durable", "auto_delete"):
        if bool(actual.get(flag)) != getattr(e, flag):
            diffs.append(Difference(flag, getattr(e, flag), bool(actual.get(flag))))
    args = dict(actual.get("arguments") or {})
    if e.kind == "queue":
        actual_type = actual.get("type") or args.get("x-queue-type") or "classic"
        if actual_type != e.queue_type:
            diffs.append(Difference("x-queue-type", e.queue_type, actual_type))
        args.pop("x-queue-type", None)
    configured = {k: v for k, v in e.arguments.items() if k != "x-queue-type"}
    for key in sorted(set(configured) | set(args)):
        if configured.get(key) != args.get(key):
            diffs.append(Difference(key, configured.get(key), args.get(key)))
    return diffs


def parse_refusal(reply_text: str) -> Difference | None:
    """The difference a 406 ``inequivalent arg`` reply names (None for other replies)."""
    m = _INEQUIVALENT.search(reply_text)
    if m is None:
        return None
    return Difference(m["arg"], _value(m["received"]), _value(m["current"]))


def _value(text: str) -> Any:
    text = text.strip()
    if text == "none":
        return None
    m = _VALUE.match(text)
    return m["value"] if m else text


# -- migrations ----------------------------------------------------------------------


def migration(e: Expected, diffs: list[Difference], rpc: bool) -> list[str]:
    """Ways out of the conflicts ``diffs`` on ``e`` (configuration vs broker)."""
    fields = {d.field for d in diffs}
    steps: list[str] = []
    if e.kind == "exchange":
        if fields & {"type", "durable", "auto_delete"} or not fields:
            steps.append(
                f"use a new exchange name (exchange = ...) and move publishers to it; "
                f"or delete exchange {e.name!r} (this drops its bindings: every queue "
                "bound to it must be bound again) and let the worker redeclare it"
            )
        steps.append(_match_config(diffs))
        return [s for s in steps if s]
    drain = (
        f"stop its consumers, drain queue {e.name!r} (let the old workers finish or "
        f"move its messages, e.g. with a shovel), delete it "
        f"(rabbitmqctl delete_queue {e.name}) and start rpcworker to redeclare it"
    )
    if "x-queue-type" in fields:
        d = next(d for d in diffs if d.field == "x-queue-type")
        steps.append(
            f"a queue's type cannot change in place ({d.actual or 'classic'} -> "
            f"{d.configured or 'classic'})"
        )
        if not rpc:
            steps.append(
                "give the binding a new queue name (queue = ...), let the old "
                f"queue {e.name!r} drain, then delete it"
            )
        steps.append(drain)
    elif fields & {"durable", "auto_delete", "exclusive"}:
        flags = "/".join(sorted(fields & {"durable", "auto_delete", "exclusive"}))
        steps.append(f"{flags} cannot change in place: " + drain)
    elif fields:
        steps.append(
            "queue arguments cannot change in place: " + drain + "; or drop them "
            "from queue_arguments and apply them with a policy "
            "(rabbitmqctl set_policy), which can change at any time"
        )
    else:
        steps.append(drain)
    steps.append(_match_config(diffs))
    return [s for s in steps if s]


def _match_config(diffs: list[Difference]) -> str:
    """Configuration that would match what the broker has."""
    wanted = []
    for d in diffs:
        if d.field in ("durable", "auto_delete", "exclusive"):
            wanted.append(f"{d.field} = {_show(d.actual)}")
        elif d.field == "type":
            wanted.append(f"an exchange of type {d.actual}")
        elif d.field == "x-queue-type" and d.actual in (None, "classic", "quorum"):
            wanted.append(f"queue_type = {d.actual or 'classic'}")
        elif d.field.startswith("x-") and d.actual is None:
            wanted.append(f"queue_arguments without {d.field}")
        elif d.field.startswith("x-"):
            wanted.append(f"queue_arguments with {d.field}:{_show(d.actual)}")
    if not wanted:
        return ""
    return f"or keep what the broker has: configure {', '.join(wanted)}"


# -- the check -----------------------------------------------------------------------


def check(
    parsed: list[Binding],
    settings: broker.BrokerSettings,
    conn: kombu.Connection,
    management_url: str | None = None,
) -> BrokerCheck:
    """Compare ``parsed`` with the broker ``conn`` points at. Creates and deletes nothing.

    ``management_url``: the management API (default ``http://HOST:15672`` of the first
    broker host). The connection is released before returning.
    """
    host = settings.hosts[0]
    try:
        conn.ensure_connection(
            max_retries=max(0, len(settings.hosts) - 1),
            interval_start=0,
            interval_step=0,
            interval_max=0,
        )
    except Exception as exc:
        where = transport.attempted(exc, conn)
        conn.release()
        return BrokerCheck(broker=where, unreachable=f"{where}: {broker.explain(exc)}")
    where = broker.describe(settings)
    try:
        url = management_url or f"http://{_url_host(conn, host)}:{MANAGEMENT_PORT}"
        mgmt: Management | None = Management(url, host.userid, host.password)
        assert mgmt is not None
        why = mgmt.probe()
        if why is None:
            note = f"management API {url}: actual flags and arguments shown"
        else:
            note = (
                f"management API {url} not reachable ({why}): conflicts are found by "
                "declaring, without the broker's full list of differences"
            )
            mgmt = None
        rpc = {b.name for b in parsed if b.type == "rpc"}
        findings = [
            _check_one(conn, e, mgmt, host.virtual_host, bool(rpc & set(e.bindings)))
            for e in expected_entities(parsed)
        ]
        return BrokerCheck(
            broker=where,
            findings=tuple(findings),
            management=note,
            version=server_version(conn),
            deprecated=tuple(deprecated_entities(parsed)),
        )
    finally:
        conn.release()


def _url_host(conn: kombu.Connection, host: broker.Host) -> str:
    name = conn.hostname or host.hostname
    return f"[{name}]" if ":" in name else name


def _check_one(
    conn: kombu.Connection, e: Expected, mgmt: Management | None, vhost: str, rpc: bool
) -> Finding:
    if e.skip:
        return Finding(e, SKIPPED, reason=e.skip)
    with _channel(conn) as ch:
        try:
            if e.kind == "exchange":
                ch.exchange_declare(e.name, e.type, passive=True)
            else:
                ch.queue_declare(e.name, passive=True)
        except tuple(conn.channel_errors) as exc:
            if getattr(exc, "reply_code", None) == 404:
                return Finding(e, CREATE)
            raise
    actual: dict[str, Any] | None = None
    if mgmt is not None:
        with contextlib.suppress(OSError, ValueError):
            actual = (mgmt.exchange if e.kind == "exchange" else mgmt.queue)(vhost, e.name)
    diffs = compare(e, actual) if actual is not None else []
    messages = actual.get("messages") if actual is not None else None
    with _channel(conn) as ch:
        try:
            # it exists: an equivalent declaration is a no-op, another one is refused
            if e.kind == "exchange":
                ch.exchange_declare(
                    e.name,
                    e.type,
                    durable=e.durable,
                    auto_delete=e.auto_delete,
                    arguments=dict(e.arguments),
                )
            else:
                ch.queue_declare(
                    e.name,
                    durable=e.durable,
                    auto_delete=e.auto_delete,
                    exclusive=e.exclusive,
                    arguments=dict(e.arguments),
                )
        except tuple(conn.channel_errors) as exc:
            code = getattr(exc, "reply_code", None)
            text = getattr(exc, "reply_text", None) or str(exc)
            if not diffs:
                refused = parse_refusal(text)
                diffs = [refused] if refused is not None else []
            reason = f"{code} {text}" if code and not text.startswith(str(code)) else text
            steps = migration(e, diffs, rpc)
            if code == 405:
                steps = [
                    "the queue is exclusive to another connection: stop the program "
                    "that owns it, or use another queue name"
                ]
            return Finding(
                e,
                CONFLICT,
                reason=reason,
                differences=tuple(diffs),
                migration=tuple(steps),
                messages=messages if isinstance(messages, int) else None,
            )
    return Finding(e, EXISTS, differences=tuple(diffs))


@contextlib.contextmanager
def _channel(conn: kombu.Connection) -> Iterator[Any]:
    """A throwaway channel: closed afterwards, even when the broker closed it."""
    ch = conn.channel()
    try:
        yield ch
    finally:
        with contextlib.suppress(Exception):
            ch.close()


def _summary(e: Expected) -> str:
    if e.kind == "exchange":
        text = f"type={e.type} durable={e.durable} auto_delete={e.auto_delete}"
    else:
        text = f"durable={e.durable} auto_delete={e.auto_delete} exclusive={e.exclusive}"
    if e.arguments:
        text += f" arguments={dict(e.arguments)}"
    return f"does not exist; rpcworker declares it at start-up ({text})"


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
