"""``rpcworker-client parked list | replay | purge | export`` against the real broker and
the real daemon: messages parked through real failures (max_retries 0 and a handler that
fails until its cause is fixed), a classic and a quorum parking lot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kombu
import pytest

from tests.functional.conftest import BROKER_URL, delete_queues
from tests.functional.support import (
    CLIENT,
    PikaClient,
    Workers,
    broker_stopped,
    free_port,
    queue_info,
    records,
    run_client,
)
from tests.helpers import http_get, wait_for


def topic(uid: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "topic",
        "handler": "recorder",
        "exchange": f"ex-{uid}",
        "queue": f"q-{uid}",
        "routing_key": "flaky.#",
        "max_retries": 0,
        "dead_letter_queue": f"dlq-{uid}",
        **options,
    }


def depth(queue: str) -> int:
    """Messages in ``queue`` as its leader counts them (a passive declare: rabbitmqctl's
    figures of a quorum queue lag behind)."""
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


def park(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path, n: int, **options: Any
) -> tuple[Any, Path]:
    """A daemon whose handler fails while ``broken`` exists; ``n`` events parked."""
    broken = tmp_path / "broken"
    broken.write_text("the cause\n")
    workers.queues |= {f"dlq-{uid}"}
    d = workers.start({"c": topic(uid, **options)}, recorder={"fail_while": broken})
    for i in range(n):
        amqp.publish(f"ex-{uid}", f"flaky.{i}", {"flaky": i}, message_id=f"m-{uid}-{i}")
    wait_for(
        lambda: (queue_info(f"dlq-{uid}") or {}).get("messages_ready") == n,
        30,
        message=f"{n} messages parked",
    )
    return d, broken


def listed(conf: Path, *args: str) -> list[dict[str, Any]]:
    p = run_client(conf, "parked", "list", "--json", *args)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def handled(d: Any) -> list[int]:
    return [r["body"]["flaky"] for r in records(d, kind="event")]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_list_leaves_the_lot_in_place_and_replay_runs_each_once_more(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path, queue_type: str
) -> None:
    n = 5
    d, broken = park(workers, amqp, uid, tmp_path, n, queue_type=queue_type)
    conf, lot = d.config_path, f"dlq-{uid}"

    p = run_client(conf, "parked", "list")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == n
    # the handler threads park them in the order they fail: the lot's order is its own
    first = listed(conf)
    order = [m["body"]["flaky"] for m in first]
    assert sorted(order) == list(range(n))
    i = order[0]
    assert lines[0].startswith(f"{lot}#0  binding=c  event  retries=0  from=ex-{uid}/flaky.{i}")
    assert "reason: ValueError" in lines[0] and "flaky: the cause is not fixed yet" in lines[0]
    assert f"message_id=m-{uid}-{i}" in lines[0]
    assert f"{lot}: {n} parked, {n} listed" in p.stderr

    for _ in range(3):  # looking, again and again, changes nothing
        seen = listed(conf)
        assert [m["body"]["flaky"] for m in seen] == order
        assert [m["ids"]["message_id"] for m in seen] == [f"m-{uid}-{i}" for i in order]
        assert all(not m["headers"].get("x-delivery-count") for m in seen), seen
        assert depth(lot) == n
    assert seen[0]["original_queue"] == f"q-{uid}" and seen[0]["size"] == len(b'{"flaky": 0}')
    assert [m["body"]["flaky"] for m in listed(conf, "--limit", "2")] == order[:2]
    assert [m["body"]["flaky"] for m in listed(conf)] == order

    dry = run_client(conf, "parked", "replay", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would replay") == n
    assert "routing key 'flaky.3'" in dry.stdout
    assert depth(lot) == n and handled(d) == []

    broken.unlink()  # the operator fixed the cause
    p = run_client(conf, "parked", "replay")
    assert p.returncode == 0, p.stderr
    assert f"replayed {n} message(s)" in p.stderr
    wait_for(lambda: len(handled(d)) >= n, 20, message="the replayed messages handled")
    assert sorted(handled(d)) == list(range(n))  # each exactly once more
    assert depth(lot) == 0
    headers = records(d, kind="event")[0]["headers"]
    assert headers["x-rpcworker-replayed"] == 1
    assert "x-rpcworker-retries" not in headers and "x-rpcworker-failure" not in headers
    assert "flaky: the cause is not fixed yet" in headers["x-rpcworker-replayed-failure"]
    assert queue_info(lot) is not None  # the lot itself stays


def test_replay_that_the_broker_cannot_route_keeps_the_message_parked(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    d, broken = park(workers, amqp, uid, tmp_path, 2)
    conf, lot = d.config_path, f"dlq-{uid}"
    broken.unlink()
    p = run_client(conf, "parked", "replay", "--to-queue", f"nowhere-{uid}")
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("not replayed:") == 2
    assert f"message_id=m-{uid}-0" in p.stderr and "unroutable" in p.stderr
    assert depth(lot) == 2

    order = [m["body"] for m in listed(conf)]
    assert sorted(m["flaky"] for m in order) == [0, 1]

    # the original exchange is gone: a 404 on publish, the message stays parked
    amqp.channel.exchange_delete(f"ex-{uid}")
    p = run_client(conf, "parked", "replay", "--count", "1")
    assert p.returncode == 1, p.stderr
    assert "NOT_FOUND" in p.stderr and f"m-{uid}-{order[0]['flaky']}" in p.stderr
    assert [m["body"] for m in listed(conf)] == order
    assert handled(d) == []


def test_purge_refuses_without_yes_and_deletes_only_what_is_selected(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    d, _ = park(workers, amqp, uid, tmp_path, 3)
    conf, lot = d.config_path, f"dlq-{uid}"
    # one parked for another reason: a body that is not JSON
    amqp.publish(f"ex-{uid}", "flaky.x", b"not json", content_type="text/plain")
    wait_for(lambda: depth(lot) == 4, 20, message="the refused message parked")

    p = run_client(conf, "parked", "purge")
    assert p.returncode == 2
    assert "purge would delete 4 message(s): add --yes" in p.stderr
    assert depth(lot) == 4

    p = run_client(conf, "parked", "purge", "--reason", "content type", "--yes")
    assert p.returncode == 0, p.stderr
    assert f"{lot}: deleted 1 of 4" in p.stderr
    assert sorted(m["body"]["flaky"] for m in listed(conf)) == [0, 1, 2]
    bad = run_client(conf, "parked", "purge", "--reason", "(", "--yes")
    assert bad.returncode == 2 and "--reason" in bad.stderr
    unknown = run_client(conf, "parked", "list", "--binding", "nope")
    assert unknown.returncode == 2 and "no binding 'nope'" in unknown.stderr


def test_export_leaves_the_lot_and_the_fixture_reproduces_the_failure(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    from rpcworker_testplugin import Recorder

    from rpcworker.parking import parked
    from rpcworker.testing import HandlerFixture

    d, broken = park(workers, amqp, uid, tmp_path, 3)
    conf, lot = d.config_path, f"dlq-{uid}"
    out = tmp_path / "parked.jsonl"
    p = run_client(conf, "parked", "export", "--output", str(out))
    assert p.returncode == 0, p.stderr
    exported = list(parked.read_export(str(out)))
    assert sorted(m.body for m in exported) == [json.dumps({"flaky": i}).encode() for i in range(3)]
    assert (
        exported[0].properties["message_id"] == f"m-{uid}-{json.loads(exported[0].body)['flaky']}"
    )
    assert depth(lot) == 3
    bad = run_client(conf, "parked", "export", "--output", str(tmp_path / "no" / "x.jsonl"))
    assert bad.returncode == 2 and "--output: cannot write" in bad.stderr

    config = f"[recorder]\nfail_while = {broken}\n"
    with HandlerFixture(Recorder, config_text=config, binding_options={"max_retries": 0}) as fx:
        assert fx.replay(str(out)) == 3
        outcomes = fx.wait_for_outcomes(3)
    assert all(o.dead_lettered for o in outcomes), outcomes
    assert [exported[i].reason.split(":")[0] for i in range(3)] == ["ValueError"] * 3
    assert all("flaky: the cause is not fixed yet" in (o.reason or "") for o in outcomes)


@pytest.mark.parametrize("workers_n", [1, 2])
def test_parked_depth_on_the_metrics_endpoint(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path, workers_n: int
) -> None:
    port = free_port()
    workers.queues |= {f"dlq-{uid}"}
    workers.start(
        {"c": topic(uid)},
        default={"workers": workers_n},
        extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n",
    )
    sample = f'rpcworker_parked_messages{{binding="c",queue="dlq-{uid}"}}'

    def gauge() -> float | None:
        status, body = http_get(port, "/metrics")
        for row in body.splitlines() if status == 200 else []:
            if row.startswith(sample + " "):
                return float(row.split()[-1])
        return None

    wait_for(lambda: gauge() == 0.0, 30, message=f"{sample} 0")
    for i in range(2):  # no fail_while: a body that is not JSON is parked at once
        amqp.publish(f"ex-{uid}", f"flaky.{i}", b"not json", content_type="text/plain")
    wait_for(lambda: gauge() == 2.0, 30, message=f"{sample} 2")


def test_broker_restart_during_replay_loses_nothing(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    n = 3000
    d, broken = park(workers, amqp, uid, tmp_path, n)
    conf, lot = d.config_path, f"dlq-{uid}"
    broken.unlink()
    replay = subprocess.Popen(
        [*CLIENT, "--config-file", str(conf), "parked", "replay"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: depth(lot) < n - 300 or replay.poll() is not None,
            60,
            interval=0.02,
            message="the replay under way",
        )
        with broker_stopped():
            first = replay.wait(timeout=60)
    finally:
        if replay.poll() is None:
            replay.kill()
    err = replay.stderr.read() if replay.stderr else ""
    assert first in (0, 4), err
    rounds = 1
    while depth(lot):  # what the first run did not replay is still parked: run it again
        p = run_client(conf, "parked", "replay")
        assert p.returncode == 0, p.stderr
        rounds += 1
    wait_for(lambda: len(set(handled(d))) == n, 120, message="every parked message handled")
    assert set(handled(d)) == set(range(n))  # nothing lost
    print(
        f"replay with a broker restart: {n} messages, {rounds} runs, "
        f"{len(handled(d)) - n} handled twice"
    )
    delete_queues(lot)


def test_a_lot_behind_an_exchange_or_the_queues_own_dead_letter_exchange(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    """dead_letter_exchange only: its queues are found through the management API, or
    named with --queue; a queue's own x-dead-letter-exchange: read through x-death."""
    dlx, manual, own = f"dlx-{uid}", f"manual-{uid}", f"own-{uid}"
    amqp.channel.exchange_declare(dlx, "topic", durable=True)
    for name, key in ((manual, "parked.#"), (own, "own.#")):
        amqp.channel.queue_declare(name, durable=True)
        amqp.channel.queue_bind(name, dlx, key)
    workers.queues |= {manual, own}
    workers.exchanges |= {dlx}
    broken = tmp_path / "broken"
    broken.write_text("x\n")
    c = topic(uid, dead_letter_exchange=dlx, dead_letter_routing_key="parked.c")
    del c["dead_letter_queue"]
    d = workers.start(
        {
            "c": c,
            "r": {
                "type": "topic",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": f"r-{uid}",
                "routing_key": "own.#",
                "max_retries": 0,
                "queue_arguments": f"x-dead-letter-exchange:{dlx}",
            },
        },
        recorder={"fail_while": broken},
    )
    conf = d.config_path
    amqp.publish(f"ex-{uid}", "flaky.1", {"flaky": 1})
    amqp.publish(f"ex-{uid}", "own.2", {"flaky": 2})
    wait_for(lambda: depth(manual) == 1 and depth(own) == 1, 20, message="one message in each lot")

    p = run_client(conf, "parked", "list", "--binding", "c")
    if "management API" in p.stderr:  # the machine's broker has no management plugin
        assert p.returncode == 4 and "--queue" in p.stderr
    else:
        assert p.returncode == 0 and p.stdout.startswith(f"{manual}#0  binding=c"), p
    [m] = listed(conf, "--queue", manual, "--binding", "c")
    assert m["binding"] == "c" and m["original_routing_key"] == "flaky.1"

    [m] = listed(conf, "--queue", own, "--binding", "r")  # parked by the broker: x-death
    assert m["binding"] is None and m["reason"] == "rejected"
    assert (m["original_exchange"], m["original_routing_key"]) == (f"ex-{uid}", "own.2")
    assert m["original_queue"] == f"r-{uid}" and m["age"] is not None

    broken.unlink()
    for lot in (manual, own):
        p = run_client(conf, "parked", "replay", "--queue", lot)
        assert p.returncode == 0, p.stderr
    wait_for(lambda: sorted(handled(d)) == [1, 2], 20, message="both replayed and handled")
    assert depth(manual) == 0 and depth(own) == 0
    own_headers = [r["headers"] for r in records(d, kind="event") if r["body"] == {"flaky": 2}]
    assert "x-death" not in own_headers[0] and own_headers[0]["x-rpcworker-replayed"] == 1


def test_a_parked_oslo_cast_is_replayed_to_its_topic(
    workers: Workers, uid: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.write_text("x\n")
    lot = f"dlq-{uid}"
    workers.queues |= {lot, f"t-{uid}"}
    d = workers.start(
        {
            "r": {
                "type": "rpc",
                "handler": "recorder",
                "topic": f"t-{uid}",
                "max_retries": 0,
                "dead_letter_queue": lot,
            }
        },
        recorder={"fail_while": broken},
    )
    conf = d.config_path
    p = run_client(conf, "cast", f"t-{uid}", "flaky", "--arg", "tag=1")
    assert p.returncode == 0, p.stderr
    wait_for(lambda: depth(lot) == 1, 20, message="the cast parked")
    [m] = listed(conf, "--binding", "r")
    assert (m["kind"], m["name"], m["original_exchange"], m["original_routing_key"]) == (
        "cast",
        "flaky",
        "openstack",
        f"t-{uid}",
    )
    assert len(m["ids"]["unique_id"]) == 32 and m["body"]["args"] == {"tag": 1}
    broken.unlink()
    p = run_client(conf, "parked", "replay", "--binding", "r")
    assert p.returncode == 0, p.stderr
    wait_for(lambda: records(d, method="flaky"), 20, message="the replayed cast handled")
    assert [r["args"] for r in records(d, method="flaky")] == [{"tag": 1}]
    assert depth(lot) == 0
