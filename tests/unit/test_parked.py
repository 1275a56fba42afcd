"""The parking lot without a broker: a parked message's fields, its export form and its
replay copy, which queues are whose lot, the command line, the depth collector and
HandlerFixture.replay()."""

from __future__ import annotations

import datetime
import decimal
import json
from pathlib import Path
from typing import Any

import pytest

from rpcworker.client import args as client_args
from rpcworker.client.exits import EXIT_BROKER, EXIT_USAGE, ClientError
from rpcworker.client.parkedcmds import Selection, find, line
from rpcworker.config import bindingconf
from rpcworker.daemon import lotdepth
from rpcworker.parking.lots import Lot, topic_matches
from rpcworker.parking.parked import Parked, read_export
from rpcworker.policy import failures
from rpcworker.testing import HandlerFixture
from rpcworker.wire import envelope, xheaders

CAST = envelope.envelope(envelope.oslo_request("resize", {"size": 2}, {"user": "u1"}))


def parked_cast(**headers: Any) -> Parked:
    hdrs = {
        xheaders.FAILURE_HEADER: "ValueError: no room",
        xheaders.BINDING_HEADER: "c",
        xheaders.RETRIES_HEADER: 3,
        xheaders.ORIGINAL_EXCHANGE_HEADER: "nova",
        xheaders.ORIGINAL_KEY_HEADER: "compute",
        xheaders.ORIGINAL_QUEUE_HEADER: "compute",
        xheaders.PARKED_AT_HEADER: "2026-12-02T10:00:00.000Z",
        **headers,
    }
    return Parked(
        "dlq",
        0,
        CAST,
        {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "message_id": "m1",
            "delivery_mode": 2,
        },
        hdrs,
    )


def test_a_parked_cast_says_why_where_from_and_what() -> None:
    p = parked_cast()
    now = datetime.datetime(2026, 12, 2, 10, 5, tzinfo=datetime.timezone.utc).timestamp()
    s = p.summary(now)
    assert (s["binding"], s["reason"], s["retries"], s["kind"], s["name"]) == (
        "c",
        "ValueError: no room",
        3,
        "cast",
        "resize",
    )
    assert (s["original_exchange"], s["original_routing_key"], s["original_queue"]) == (
        "nova",
        "compute",
        "compute",
    )
    assert s["ids"]["message_id"] == "m1" and len(s["ids"]["unique_id"]) == 32
    assert s["age"] == 300.0 and s["size"] == len(CAST) and s["replays"] == 0
    text = line(p, now)
    assert text.startswith(
        "dlq#0  binding=c  cast resize  retries=3  from=nova/compute  queue=compute  size="
    )
    assert "age=5.0m" in text and text.endswith("reason: ValueError: no room")


def test_what_the_broker_parked_is_read_from_x_death() -> None:
    at = datetime.datetime(2026, 12, 2, 9, 0)
    p = Parked(
        "own",
        2,
        b'{"event_type": "x.y"}',
        {},
        {
            "x-death": [
                {
                    "reason": "expired",
                    "queue": "q2",
                    "exchange": "",
                    "routing-keys": ["q2"],
                    "time": at,
                },
                {
                    "reason": "rejected",
                    "queue": "q1",
                    "exchange": "ex",
                    "routing-keys": ["k.1"],
                    "time": at,
                    "count": 1,
                },
            ]
        },
    )
    assert (p.reason, p.original_exchange, p.original_routing_key, p.original_queue) == (
        "rejected",
        "ex",
        "k.1",
        "q1",
    )
    assert p.binding is None and p.kind() == ("event", "x.y")
    assert p.parked_at() == at.replace(tzinfo=datetime.timezone.utc).timestamp()


def test_kinds() -> None:
    note = envelope.envelope(
        envelope.oslo_notification(
            "INFO", "compute.instance.create.end", {"id": 1}, "compute.h1", {}
        )
    )
    assert Parked("q", 0, note, {}, {}).kind() == ("notification", "compute.instance.create.end")
    call = envelope.envelope(envelope.oslo_request("get", {}, {}, msg_id="m", reply_q="r"))
    assert Parked("q", 0, call, {}, {}).kind() == ("call", "get")
    assert Parked("q", 0, b"\xff\xfe", {}, {}).kind() == ("undecodable", None)
    assert Parked("q", 0, b"[1, 2]", {}, {}).kind() == ("event", None)


def test_export_round_trips_byte_for_byte(tmp_path: Path) -> None:
    headers = {
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "raw": b"\x00\x01",
        "price": decimal.Decimal("1.50"),
        "nested": {"list": [1, b"x"]},
        xheaders.FAILURE_HEADER: "boom",
    }
    props = {
        "content_type": "application/octet-stream",
        "message_id": "m9",
        "timestamp": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "priority": 3,
    }
    originals = [Parked("dlq", 0, b"\xff not utf-8", props, headers), parked_cast()]
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(p.to_json(exact=True)) + "\n\n" for p in originals))
    back = list(read_export(str(path)))
    assert [(b.body, dict(b.properties), dict(b.headers)) for b in back] == [
        (o.body, dict(o.properties), dict(o.headers)) for o in originals
    ]
    assert "body_base64" in originals[0].to_json(exact=True)
    assert originals[1].to_json(exact=True)["body_text"] == CAST.decode()
    readable = originals[1].to_json(exact=False)
    assert readable["body"]["method"] == "resize" and "body_text" not in readable
    path.write_text('{"queue": "q"}\n')
    with pytest.raises(ValueError, match="export.jsonl:1: neither body_text"):
        list(read_export(str(path)))


def test_the_replay_copy_resets_the_counters_and_counts_the_replay() -> None:
    p = parked_cast(
        **{
            "x-delivery-count": 4,
            "x-death": [],
            "x-first-death-queue": "q",
            xheaders.REDELIVERIES_HEADER: 2,
            "trace": "keep me",
        }
    )
    hdrs = p.replay_headers(now=0.0)
    for gone in (
        xheaders.RETRIES_HEADER,
        xheaders.REDELIVERIES_HEADER,
        xheaders.FAILURE_HEADER,
        xheaders.BINDING_HEADER,
        xheaders.PARKED_AT_HEADER,
        "x-delivery-count",
        "x-death",
        "x-first-death-queue",
    ):
        assert gone not in hdrs
    assert hdrs["trace"] == "keep me"
    assert hdrs["x-rpcworker-replayed"] == 1
    assert hdrs["x-rpcworker-replayed-at"] == "1970-01-01T00:00:00.000Z"
    assert hdrs["x-rpcworker-replayed-failure"] == "ValueError: no room"
    assert hdrs[xheaders.ORIGINAL_EXCHANGE_HEADER] == "nova"
    again = Parked("dlq", 0, CAST, {}, {**hdrs, xheaders.FAILURE_HEADER: "again"})
    assert again.replay_headers()["x-rpcworker-replayed"] == 2
    assert p.kept_properties() == {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "message_id": "m1",
        "delivery_mode": 2,
    }


def test_a_dead_letter_copy_says_when_it_was_parked(make_conf: Any) -> None:
    [b] = bindingconf.parse(
        make_conf(
            "[DEFAULT]\nbindings = c\n[binding:c]\ntype = direct\n"
            "handler = h\nexchange = e\nqueue = q\nrouting_key = k\n"
            "dead_letter_queue = dlq\n"
        )
    )
    copy = failures.dead_letter_copy(b, "q", b"{}", {}, {}, "boom", "e", "k")
    assert copy is not None
    stamp = Parked("dlq", 0, b"{}", {}, copy.headers).parked_at()
    assert stamp is not None and abs(stamp - datetime.datetime.now().timestamp()) < 60


@pytest.mark.parametrize(
    ("pattern", "key", "match"),
    [
        ("#", "a.b", True),
        ("#", "", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#.c", "a.b.c", True),
        ("*.b.#", "a.b", True),
        ("parked", "parked", True),
        ("parked", "parked.x", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b", False),
    ],
)
def test_topic_matching(pattern: str, key: str, match: bool) -> None:
    assert topic_matches(pattern, key) is match


CONF = """[DEFAULT]
bindings = a, b, x, none
[binding:a]
type = direct
handler = h
exchange = e
queue = qa
routing_key = k
dead_letter_queue = shared
[binding:b]
type = direct
handler = h
exchange = e
queue = qb
routing_key = k
dead_letter_queue = shared
queue_type = {qtype}
[binding:x]
type = direct
handler = h
exchange = e
queue = qx
routing_key = k
dead_letter_exchange = dlx
dead_letter_routing_key = parked.x
[binding:none]
type = direct
handler = h
exchange = e
queue = qn
routing_key = k
"""


class FakeManagement:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, path: str) -> Any:
        self.asked.append(path)
        return [
            {"destination": "by-key", "destination_type": "queue", "routing_key": "parked.*"},
            {"destination": "other", "destination_type": "queue", "routing_key": "nope"},
            {"destination": "ex2", "destination_type": "exchange", "routing_key": "#"},
        ]


def test_which_queues_are_whose_parking_lot(make_conf: Any) -> None:
    parsed = bindingconf.parse(make_conf(CONF.format(qtype="classic")))
    mgmt = FakeManagement()
    lots = find(parsed, binding=None, queue=None, management=lambda: mgmt, vhost="/")
    assert lots == [Lot("shared", ("a", "b"), False), Lot("by-key", ("x",), None)]
    assert mgmt.asked == ["/api/exchanges/%2F/dlx/bindings/source"]
    assert find(parsed, binding="a", queue=None, management=lambda: None, vhost="/") == [
        Lot("shared", ("a",), False)
    ]
    assert find(parsed, binding="a", queue="elsewhere", management=lambda: None, vhost="/") == [
        Lot("elsewhere", ("a",))
    ]
    with pytest.raises(ClientError) as caught:
        find(parsed, binding="x", queue=None, management=lambda: None, vhost="/")
    assert caught.value.status == EXIT_BROKER and "--queue" in str(caught.value)
    with pytest.raises(ClientError) as caught:
        find(parsed, binding="none", queue=None, management=lambda: None, vhost="/")
    assert caught.value.status == EXIT_USAGE and "has no parking lot" in str(caught.value)
    with pytest.raises(ClientError) as caught:
        find(parsed, binding="zz", queue=None, management=lambda: None, vhost="/")
    assert caught.value.status == EXIT_USAGE and "bindings: a, b, x, none" in str(caught.value)


def test_a_quorum_lot_is_known_from_the_configuration(make_conf: Any) -> None:
    text = CONF.format(qtype="quorum").replace("queue = qa\n", "queue = qa\nqueue_type = quorum\n")
    parsed = bindingconf.parse(make_conf(text))
    assert find(parsed, binding="b", queue=None, management=lambda: None, vhost="/") == [
        Lot("shared", ("b",), True)
    ]


def test_selection_by_binding_reason_and_count() -> None:
    import re

    lot = Lot("shared", ("a", "c"))
    sel = Selection("c", re.compile("no room"), count=1)
    assert sel.wants(parked_cast(), lot)
    assert not sel.wants(parked_cast(**{xheaders.BINDING_HEADER: "a"}), lot)
    assert not sel.wants(parked_cast(**{xheaders.FAILURE_HEADER: "other"}), lot)
    sel.taken = 1
    assert not sel.wants(parked_cast(), lot)  # --count reached
    anonymous = Parked("own", 0, b"{}", {}, {"x-death": [{"reason": "rejected"}]})
    assert Selection("c", None).wants(anonymous, Lot("own", ("c",)))
    assert not Selection("c", None).wants(anonymous, lot)  # whose is it, in a shared lot?


def test_the_command_line() -> None:
    ns = client_args.parse_args(
        [
            "--config-file",
            "f",
            "parked",
            "replay",
            "--count",
            "3",
            "--dry-run",
            "--reason",
            "x",
            "--to-queue",
            "q",
        ]
    )
    assert (ns.command, ns.parked_command, ns.replay_count, ns.dry_run, ns.reason, ns.to_queue) == (
        "parked",
        "replay",
        3,
        True,
        "x",
        "q",
    )
    assert client_args.oslo_args(ns) == ["--config-file", "f"]
    ns = client_args.parse_args(["parked", "purge", "--config-file", "g", "--yes"])
    assert ns.yes and client_args.oslo_args(ns) == ["--config-file", "g"]
    ns = client_args.parse_args(["parked", "list", "--json", "--limit", "2"])
    assert ns.sub_json and ns.limit == 2
    for bad in (["parked"], ["parked", "export"], ["parked", "list", "--limit", "0"]):
        with pytest.raises(ClientError) as caught:
            client_args.parse_args(bad)
        assert caught.value.status == EXIT_USAGE


class FakeChannel:
    def __init__(self, depths: dict[str, int]) -> None:
        self.depths, self.is_open = depths, True

    def queue_declare(self, queue: str, passive: bool) -> Any:
        assert passive
        return type("Ok", (), {"message_count": self.depths[queue]})()

    def close(self) -> None:
        self.is_open = False


class FakeConnection:
    heartbeat = 10

    def __init__(self, depths: dict[str, int]) -> None:
        self.depths, self.connects = depths, 0

    def ensure_connection(self, max_retries: int) -> None:
        self.connects += 1

    def channel(self) -> FakeChannel:
        if self.depths.get("down"):
            raise OSError("connection refused")
        return FakeChannel(self.depths)

    def release(self) -> None:
        pass


def test_the_depth_collector_reads_at_most_every_few_seconds(
    make_conf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = make_conf(CONF.format(qtype="classic"))
    parsed = bindingconf.parse(conf)
    assert lotdepth.lots_of(parsed) == {"shared": ("a", "b")}
    depths = {"shared": 7}
    conn = FakeConnection(depths)
    monkeypatch.setattr(lotdepth.broker, "connection", lambda *a: conn)
    clock = [100.0]
    monkeypatch.setattr(lotdepth.time, "monotonic", lambda: clock[0])
    collector = lotdepth.ParkedDepth(conf, None, lotdepth.lots_of(parsed))  # type: ignore[arg-type]

    def samples() -> list[tuple[dict[str, str], float]]:
        [family] = list(collector.collect())
        return [(s.labels, s.value) for s in family.samples]

    assert samples() == [({"binding": "a,b", "queue": "shared"}, 7)]
    assert conn.heartbeat == 0
    depths["shared"] = 9
    clock[0] += 1
    assert samples()[0][1] == 7  # within PROBE_EVERY: the last reading
    clock[0] += lotdepth.PROBE_EVERY
    assert samples()[0][1] == 9
    depths["down"] = 1
    clock[0] += lotdepth.PROBE_EVERY
    assert samples() == []  # the broker cannot be asked: no stale figure
    del depths["down"]
    clock[0] += lotdepth.PROBE_EVERY
    assert samples()[0][1] == 9 and conn.connects == 2  # connected again
    assert (
        lotdepth.ParkedDepth.for_bindings(
            conf,
            type("S", (), {"folder": "/x"})(),  # type: ignore[arg-type]
            parsed,
        )
        is None
    )


class Fails:
    def __init__(self, conf: Any = None) -> None:
        self.seen: list[Any] = []

    def resize(self, ctxt: dict[str, Any], size: int) -> None:
        raise ValueError("no room", size)

    def handle_message(self, message: Any) -> None:
        self.seen.append((message.routing_key, dict(message.headers)))

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        self.seen.append((event_type, metadata["message_id"]))


def test_the_fixture_replays_an_export(tmp_path: Path) -> None:
    note = envelope.oslo_notification(
        "info", "compute.instance.delete.end", {}, "compute.h1", {}, "n-1"
    )
    messages = [
        parked_cast(),
        Parked(
            "dlq",
            1,
            b'{"thing": 1}',
            {"content_type": "application/json"},
            {xheaders.ORIGINAL_KEY_HEADER: "thing.created", xheaders.RETRIES_HEADER: 2},
        ),
        Parked("dlq", 2, envelope.envelope(note), {"content_type": "application/json"}, {}),
    ]
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(p.to_json(exact=True)) + "\n" for p in messages))
    handler = Fails()
    with HandlerFixture(handler, binding_options={"max_retries": 0}) as fx:
        assert fx.replay(str(path)) == 3
        outcomes = fx.wait_for_outcomes(3)
    [cast] = [o for o in outcomes if o.method == "resize"]
    assert cast.dead_lettered and "ValueError" in (cast.reason or "")
    assert ("compute.instance.delete.end", "n-1") in handler.seen
    [(key, headers)] = [s for s in handler.seen if s[0] == "thing.created"]
    assert headers["x-rpcworker-replayed"] == 1 and "x-rpcworker-retries" not in headers
