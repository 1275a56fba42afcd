"""``rpcworker-client parked list | replay | purge | export``: the parking lots of the
configured bindings from the operator's side (finding them: ``lots``; reading them in
place: ``browse``; the message itself: ``rpcworker.parking.parked``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from oslo_config import cfg

from rpcworker.amqp.brokercheck import MANAGEMENT_PORT, Management
from rpcworker.client.browse import LotReader
from rpcworker.client.connect import Session, broker_errors
from rpcworker.client.exits import EXIT_BROKER, EXIT_OK, EXIT_REMOTE, EXIT_USAGE, ClientError, warn
from rpcworker.config import bindingconf
from rpcworker.config.bindingconf import Binding
from rpcworker.errors import ConfigError, oneline
from rpcworker.parking.lots import Lot, exchange_lots, quorum_of
from rpcworker.parking.parked import Parked


@dataclasses.dataclass
class Selection:
    """Which messages of a lot a command acts on."""

    binding: str | None
    reason: re.Pattern[str] | None
    count: int | None = None  # at most this many (list --limit, replay --count)
    taken: int = 0

    def wants(self, p: Parked, lot: Lot) -> bool:
        if self.count is not None and self.taken >= self.count:
            return False
        if self.binding is not None and p.binding != self.binding:
            # a message without rpcworker's header (x-death) belongs to the lot's only binding
            if p.binding is not None or lot.bindings != (self.binding,):
                return False
        return self.reason is None or self.reason.search(p.reason) is not None


def _selection(ns: argparse.Namespace, count: int | None = None) -> Selection:
    try:
        reason = re.compile(ns.reason) if ns.reason else None
    except re.error as exc:
        raise ClientError(EXIT_USAGE, f"--reason: not a regular expression: {exc}") from None
    return Selection(ns.binding, reason, count)


class _Management:
    """The management API of the broker connected to, probed once when first asked."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._api: Management | None = None
        self._asked = False

    def __call__(self) -> Management | None:
        if not self._asked:
            self._asked = True
            host = self.session.settings.hosts[0]
            name = self.session.conn.hostname or host.hostname
            name = f"[{name}]" if ":" in name else name
            api = Management(f"http://{name}:{MANAGEMENT_PORT}", host.userid, host.password)
            self._api = api if api.probe() is None else None
        return self._api


def find(
    parsed: list[Binding],
    *,
    binding: str | None,
    queue: str | None,
    management: Callable[[], Any | None],
    vhost: str,
) -> list[Lot]:
    """The lots to read; ClientError 2 for a binding that is unknown or parks nowhere,
    4 when only the management API (``management()``, asked only then) could tell and
    does not answer."""
    if queue is not None:
        return [Lot(queue, (binding,) if binding else ())]
    chosen = [b for b in parsed if binding is None or b.name == binding]
    if binding is not None and not chosen:
        names = ", ".join(b.name for b in parsed) or "none"
        raise ClientError(
            EXIT_USAGE,
            f"no binding {binding!r} in the configuration (bindings: {names})",
            "ConfigError",
        )
    found: dict[str, list[Binding]] = {}
    for b in chosen:
        if b.dead_letter_queue:
            found.setdefault(b.dead_letter_queue, []).append(b)
        elif b.dead_letter_exchange:
            mgmt = management()
            if mgmt is None:
                raise ClientError(
                    EXIT_BROKER,
                    f"binding {b.name!r} parks to exchange "
                    f"{b.dead_letter_exchange!r}, whose queues only the "
                    "RabbitMQ management API can list, and it does not "
                    "answer: name the queue with --queue",
                )
            for name in exchange_lots(b, mgmt, vhost):
                found.setdefault(name, []).append(b)
        elif binding is not None:
            raise ClientError(
                EXIT_USAGE,
                f"binding {b.name!r} has no parking lot: set "
                "dead_letter_queue (or dead_letter_exchange); without one a "
                "dead letter is rejected to the queue's own "
                "x-dead-letter-exchange, if any (then use --queue)",
                "ConfigError",
            )
    return [
        Lot(name, tuple(b.name for b in owners), quorum_of(name, owners))
        for name, owners in found.items()
    ]


def _lots(
    conf: cfg.ConfigOpts,
    session: Session,
    ns: argparse.Namespace,
) -> tuple[list[Lot], _Management]:
    if session.settings.folder is not None:
        raise ClientError(
            EXIT_USAGE,
            "parked needs RabbitMQ: the filesystem:// transport has no parking lot to read",
            "ConfigError",
        )
    try:
        parsed = bindingconf.parse(conf)
    except ConfigError as exc:
        raise ClientError(EXIT_USAGE, f"configuration error: {exc}", "ConfigError") from None
    mgmt = _Management(session)
    lots = find(
        parsed,
        binding=ns.binding,
        queue=ns.queue,
        management=mgmt,
        vhost=session.settings.hosts[0].virtual_host,
    )
    if not lots:
        raise ClientError(
            EXIT_USAGE,
            "no binding of this configuration has a parking lot "
            "(dead_letter_queue or dead_letter_exchange)",
            "ConfigError",
        )
    return lots, mgmt


def _is_quorum(lot: Lot, management: _Management, vhost: str) -> bool:
    """Known from the configuration, else from the management API; unknown: rotate,
    which is safe on either type."""
    if lot.quorum is not None:
        return lot.quorum
    mgmt = management()
    info = mgmt.queue(vhost, lot.queue) if mgmt is not None else None
    return info is None or info.get("type") != "classic"


def _walk(
    conf: cfg.ConfigOpts,
    session: Session,
    ns: argparse.Namespace,
) -> Iterator[tuple[Lot, LotReader, int]]:
    """Each lot to read, with its reader and its depth when the walk began; the reader
    is flushed once the caller is done with the lot, and closed."""
    lots, mgmt = _lots(conf, session, ns)
    vhost = session.settings.hosts[0].virtual_host
    for lot in lots:
        reader = LotReader(session, lot, _is_quorum(lot, mgmt, vhost))
        try:
            depth = reader.depth()
            if depth is None:
                warn(
                    ns.sub_json,
                    f"{lot.queue}: no such queue on the broker (nothing "
                    "parked yet: the worker declares it when it starts)",
                )
                continue
            yield lot, reader, depth
            reader.flush()  # the confirms still in flight, and the acks they allow
        finally:
            reader.close()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def line(p: Parked, now: float) -> str:
    """One line of ``parked list``."""
    s = p.summary(now)
    what = s["kind"] + (f" {s['name']}" if s["name"] else "")
    ids = " ".join(f"{k}={v}" for k, v in s["ids"].items())
    origin = f"{s['original_exchange'] or '(default)'}/{s['original_routing_key']}"
    return (
        f"{p.queue}#{p.position}  binding={s['binding'] or '-'}  {what}  "
        f"retries={s['retries']}  from={origin}  queue={s['original_queue'] or '-'}  "
        f"size={s['size']}  age={_age(s['age'])}"
        + (f"  replays={s['replays']}" if s["replays"] else "")
        + (f"  {ids}" if ids else "")
        + f"  reason: {s['reason']}"
    )


# -- the commands -------------------------------------------------------------------------


def cmd_list(conf: cfg.ConfigOpts, session: Session, ns: argparse.Namespace) -> int:
    sel = _selection(ns, ns.limit)
    now = time.time()
    for lot, reader, depth in _walk(conf, session, ns):
        shown = 0
        for p in reader.messages(depth):
            if sel.wants(p, lot):
                sel.taken += 1
                shown += 1
                print(
                    json.dumps(p.to_json(exact=False, now=now), ensure_ascii=False)
                    if ns.sub_json
                    else line(p, now)
                )
            elif not reader.rotate and sel.count is not None and sel.taken >= sel.count:
                break  # classic: the rest stays in place when the walk ends
            reader.keep(p)
        warn(ns.sub_json, f"{lot.queue}: {depth} parked, {shown} listed")
    return EXIT_OK


def cmd_export(conf: cfg.ConfigOpts, session: Session, ns: argparse.Namespace) -> int:
    sel = _selection(ns)
    now = time.time()
    try:
        out: IO[str] = sys.stdout if ns.output == "-" else open(ns.output, "w", encoding="utf-8")
    except OSError as exc:
        raise ClientError(
            EXIT_USAGE, f"--output: cannot write {ns.output}: {exc.strerror or exc}"
        ) from None
    try:
        for lot, reader, depth in _walk(conf, session, ns):
            written = 0
            for p in reader.messages(depth):
                if sel.wants(p, lot):
                    out.write(json.dumps(p.to_json(exact=True, now=now), ensure_ascii=False) + "\n")
                    written += 1
                reader.keep(p)
            warn(ns.sub_json, f"{lot.queue}: {written} of {depth} exported")
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def cmd_purge(conf: cfg.ConfigOpts, session: Session, ns: argparse.Namespace) -> int:
    sel = _selection(ns)
    would = 0
    for lot, reader, depth in _walk(conf, session, ns):
        deleted = 0
        for p in reader.messages(depth):
            if sel.wants(p, lot):
                if ns.yes:
                    reader.remove(p)
                    deleted += 1
                    continue
                would += 1
            reader.keep(p)
        if ns.yes:
            warn(ns.sub_json, f"{lot.queue}: deleted {deleted} of {depth}")
    if not ns.yes:
        raise ClientError(
            EXIT_USAGE,
            f"purge would delete {would} message(s): add --yes to "
            "delete them (nothing was deleted)",
        )
    return EXIT_OK


def _target(p: Parked, ns: argparse.Namespace) -> tuple[str, str] | None:
    if ns.to_queue:
        return "", ns.to_queue
    if not p.original_exchange and not p.original_routing_key:
        return None
    return p.original_exchange, p.original_routing_key


def cmd_replay(conf: cfg.ConfigOpts, session: Session, ns: argparse.Namespace) -> int:
    sel = _selection(ns, ns.replay_count)
    failed: list[str] = []
    replayed = 0
    started = time.monotonic()

    def on_failed(p: Parked, why: str) -> None:
        failed.append(f"{p.queue}#{p.position} {_ids(p)}: {why}")

    try:
        for lot, reader, depth in _walk(conf, session, ns):
            exchanges: dict[str, bool] = {}
            for p in reader.messages(depth):
                if not sel.wants(p, lot):
                    reader.keep(p)
                    continue
                sel.taken += 1
                target = _target(p, ns)
                problem = _unfit(target, exchanges, reader)
                if problem is not None or target is None:
                    on_failed(p, problem or "no target")
                    reader.keep(p)
                elif ns.dry_run:
                    print(
                        f"would replay {p.queue}#{p.position} {_ids(p)} to exchange "
                        f"{target[0] or '(default)'!s} routing key {target[1]!r}"
                    )
                    reader.keep(p)
                else:
                    reader.move(p, target[0], target[1], p.replay_headers(), on_failed)
            reader.flush()
            replayed += reader.moved
    except broker_errors(session.conn) as exc:
        raise ClientError(
            EXIT_BROKER,
            session.scrub(
                f"broker error while replaying: {oneline(exc, with_type=False)}; the messages "
                "whose copies the broker had confirmed are out of the lot, the rest is still "
                "parked: run the command again"
            ),
        ) from None
    for text in failed:
        print(f"not replayed: {text}", file=sys.stderr)
    elapsed = time.monotonic() - started
    verb = "would replay" if ns.dry_run else "replayed"
    count = sel.taken - len(failed) if ns.dry_run else replayed
    warn(
        ns.sub_json,
        f"{verb} {count} message(s) in {elapsed:.2f}s"
        + (f"; {len(failed)} could not be and stay parked" if failed else ""),
    )
    return EXIT_REMOTE if failed else EXIT_OK


def _unfit(
    target: tuple[str, str] | None, exchanges: dict[str, bool], reader: LotReader
) -> str | None:
    """Why a message cannot be replayed to ``target``, known before publishing."""
    if target is None:
        return (
            "where it came from is unknown (no x-rpcworker-original-* nor x-death): give --to-queue"
        )
    exchange = target[0]
    if exchange not in exchanges:
        exchanges[exchange] = reader.exchange_exists(exchange)
    if not exchanges[exchange]:
        return f"NOT_FOUND - no exchange {exchange!r} on the broker"
    return None


def _ids(p: Parked) -> str:
    kind, name = p.kind()
    ids = " ".join(f"{k}={v}" for k, v in p.ids().items())
    return f"({kind}{' ' + name if name else ''}{' ' + ids if ids else ''})"


COMMANDS: dict[str, Callable[[cfg.ConfigOpts, Session, argparse.Namespace], int]] = {
    "list": cmd_list,
    "replay": cmd_replay,
    "purge": cmd_purge,
    "export": cmd_export,
}


def run(conf: cfg.ConfigOpts, session: Session, ns: argparse.Namespace) -> int:
    return COMMANDS[ns.parked_command](conf, session, ns)
