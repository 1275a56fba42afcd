"""rpcworker's benchmark harness: ``python -m benchmarks.run`` (``make bench``).

Everything runs against the local RabbitMQ, each contender in its own subprocess, the
contenders alternated within every round (A B C A B C ...), and the medians of the rounds
reported, with their ratios to the targets of issue 4. See ``--help`` for the sizes, and
the "Method" section that ``benchmarks/RESULTS.md`` gets for how each number is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.contenders import (
    DRAIN,
    ECHO_BODY,
    FloorResponder,
    OsloServer,
    RpcworkerDirect,
    RpcworkerRpc,
    Run,
    missing,
)
from benchmarks.infra import (
    BENCH,
    JSON,
    PLUGIN,
    BenchError,
    Broker,
    BrokerAddress,
    NotifyListener,
    Proc,
    broker_lock,
    collect_facts,
    delete_by_prefix,
    median,
    percentile,
    plugin_env,
    queue_stats,
    rabbitmqctl,
    rss_mb,
    wait_consumers,
    wait_probes,
    wait_until,
)

PROBE_ENV = "RPCWORKER_BENCH_PROBE_DIR"
#: rpcworker settings of the scaling phase (both sides): the tuning README gives for
#: CPU-bound handlers
SCALING_DEFAULTS = "executor_thread_pool_size = 1"
SCALING_BINDING = "prefetch_count = 4"

PHASES = ("drain", "latency", "concurrency", "scaling", "memory", "startup", "profile")
WARMUP_CALLS = 20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark rpcworker against bare kombu and py-amqp consumers, "
        "oslo.messaging, Celery (and dramatiq, nameko when installed) on the local RabbitMQ.",
    )
    p.add_argument(
        "--n", type=int, default=20_000, help="messages per drain run (default %(default)s)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every alternated comparison (default %(default)s)",
    )
    p.add_argument(
        "--calls",
        type=int,
        default=1000,
        help="sequential calls per latency run (default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=16,
        help="client threads of the concurrent-calls run (default %(default)s)",
    )
    p.add_argument(
        "--concurrent-calls",
        type=int,
        default=3200,
        help="calls per concurrent run, split over the threads (default %(default)s)",
    )
    p.add_argument(
        "--scale-n",
        type=int,
        default=3000,
        help="messages per run of the CPU-bound scaling test (default %(default)s)",
    )
    p.add_argument(
        "--burn-ms",
        type=float,
        default=2.0,
        help="CPU time of one CPU-bound message, in ms (default %(default)s)",
    )
    p.add_argument(
        "--rss-messages",
        type=int,
        default=100_000,
        help="messages through rpcworker for the memory test (default %(default)s)",
    )
    p.add_argument(
        "--profile-n",
        type=int,
        default=60_000,
        help="messages of the profiled rpcworker drain (phase 'profile', needs "
        "py-spy; default %(default)s)",
    )
    p.add_argument(
        "--no-broker-restart",
        action="store_true",
        help="skip the broker restart test (it stops and starts RabbitMQ's app)",
    )
    p.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES)
    )
    p.add_argument(
        "--contenders",
        default=",".join(DRAIN),
        help="drain contenders, comma-separated subset of: " + ", ".join(DRAIN),
    )
    p.add_argument(
        "--results",
        default=str(BENCH / "RESULTS.md"),
        help="the Markdown report to write (default benchmarks/RESULTS.md)",
    )
    p.add_argument("--json", default=None, help="also write the raw results as JSON here")
    p.add_argument(
        "--lock",
        default=os.environ.get("RPCWORKER_BENCH_LOCK"),
        help="flock this file around each broker-using step (e.g. "
        "/tmp/rpcworker-broker.lock; env RPCWORKER_BENCH_LOCK); released in "
        "between so that other test runs can interleave (do not also wrap the "
        "harness in `flock` on the same file: it would wait for itself)",
    )
    p.add_argument("--host", default=os.environ.get("RPCWORKER_TEST_BROKER_HOST", "127.0.0.1"))
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("RPCWORKER_TEST_BROKER_PORT", "5672"))
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary directory with configs and contender logs",
    )
    args = p.parse_args(argv)
    args.phases = [x for x in args.phases.split(",") if x]
    args.contenders = [x for x in args.contenders.split(",") if x]
    for x in args.phases:
        if x not in PHASES:
            p.error(f"unknown phase {x!r}")
    for x in args.contenders:
        if x not in DRAIN:
            p.error(f"unknown contender {x!r}")
    if args.rounds < 1 or args.n < 1 or args.calls < 1 or args.threads < 1:
        p.error("--rounds, --n, --calls and --threads must be at least 1")
    return args


def calibrate_burn(ms: float) -> int:
    """Loop turns of ``rpcworker_benchplugin.spin`` that take ``ms`` of CPU here: the
    fastest of repeated timings over half a second (a busy moment only slows some)."""
    from rpcworker_benchplugin import spin

    k = 20_000
    timings: list[float] = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline or len(timings) < 10:
        timings.append(_timed(lambda: spin(k)))
    return max(1, int(k * ms / 1000 / min(timings)))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.address = BrokerAddress(args.host, args.port)
        self.workdir = Path(tempfile.mkdtemp(prefix="rpcworker-bench-"))
        self.prefix = f"rwbench-{uuid.uuid4().hex[:6]}-"
        self.seq = 0
        self.env = plugin_env(self.workdir)
        self.broker = Broker(self.address)
        self.started = time.monotonic()
        self.results: dict[str, Any] = {}
        self.failed = False

    # -- helpers --------------------------------------------------------------------------

    def uid(self, tag: str) -> str:
        self.seq += 1
        return f"{self.prefix}{tag}{self.seq}"

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return broker_lock(self.args.lock)

    def sweep(self) -> None:
        """Delete whatever this run left on the broker (retry queues, reply queues...)."""
        with contextlib.suppress(Exception):
            delete_by_prefix(self.broker, self.prefix)

    def acked_by(self, queue: str, timeout: float = 60) -> float | None:
        """None when nothing of ``queue`` is ready or unacknowledged now; otherwise the
        monotonic time at which that became true (polled with rabbitmqctl: coarse)."""

        def drained() -> bool:
            return (
                self.broker.counts(queue)[0] == 0
                and queue_stats(queue).get(queue, {"unacked": 0})["unacked"] == 0
            )

        if drained():
            return None
        wait_until(drained, timeout, f"{queue} fully acked", interval=0.1)
        return time.monotonic()

    # -- 1 and 4: drain ------------------------------------------------------------------

    def prefill(self, run: Run, n: int) -> None:
        """Declare the contender's queue and put ``n`` messages in it."""
        run.declare()
        run.prefill(n)
        # the broker answers a passive declare ahead of deliveries still on their way to
        # the queue: wait until they are all in
        with contextlib.suppress(BenchError):
            wait_until(lambda: self.broker.counts(run.queue)[0] >= n, 30, "the prefill")
        ready, consumers = self.broker.counts(run.queue)
        if ready < n or consumers:
            raise BenchError(
                f"prefill: {ready} messages and {consumers} consumers on "
                f"{run.queue}, expected {n} and 0"
            )

    def measure_drain(self, run: Run, n: int) -> dict[str, Any]:
        """Prefill ``n`` messages, start the contender, time from the moment its consumers
        are on the queue to the moment the last message has been handled; then check that
        everything was acked."""
        try:
            self.prefill(run, n)
        except Exception:
            run.cleanup()
            raise
        probe_dir = self.workdir / f"probe-{run.uid}"
        probe_dir.mkdir()
        proc = run.start({**self.env, PROBE_ENV: str(probe_dir)})
        try:
            t0 = wait_consumers(self.broker, run.queue, run.consumers, 120, proc.alive)
            wait_probes(probe_dir, n, max(120.0, n / 50), proc.alive, times=False)
            acked = self.acked_by(run.queue)
            times = wait_probes(probe_dir, n, 30, proc.alive)
            rss = rss_mb(proc.pid)
        except Exception as exc:
            raise BenchError(f"{run.label}: {exc!r}; log {run.log()}:\n{proc.tail()}") from exc
        finally:
            proc.stop()
            run.cleanup()
        t_end = times[-1]
        counted = sum(1 for t in times if t >= t0)
        return {
            "rate": counted / (t_end - t0),
            "seconds": t_end - t0,
            "handled": len(times),
            "counted": counted,
            "rss_mb": rss,
            "first_after": times[0] - t0,
            "ack_tail": None if acked is None else acked - t_end,
        }

    def phase_drain(self) -> None:
        a = self.args
        out: dict[str, Any] = {}
        runnable = []
        for key in a.contenders:
            cls, dists = DRAIN[key]
            reason = missing(*dists)
            if reason:
                out[key] = {"label": cls.label, "skipped": reason}
                self.say(f"drain: {key} skipped: {reason}")
            else:
                out[key] = {"label": cls.label, "rounds": [], "errors": []}
                runnable.append(key)
        self.results["drain"] = out
        for r in range(a.rounds):
            with self.lock():
                for key in runnable:
                    cls = DRAIN[key][0]
                    run = cls(self.broker, self.uid(key[:6]), self.workdir)
                    try:
                        res = self.measure_drain(run, a.n)
                    except Exception as exc:
                        self.fail(out[key], f"round {r + 1}: {exc}")
                        continue
                    out[key]["rounds"].append({**res, "round": r})
                    self.say(
                        f"drain round {r + 1}/{a.rounds}: {run.label:<24} "
                        f"{res['rate']:8.0f} msg/s ({res['seconds']:.2f} s)"
                    )
                self.sweep()
        for entry in out.values():
            if entry.get("rounds"):
                entry["median"] = median([x["rate"] for x in entry["rounds"]])

    def fail(self, entry: dict[str, Any], text: str) -> None:
        self.failed = True
        entry.setdefault("errors", []).append(text.splitlines()[0])
        self.say(f"FAILED {text}")

    def phase_scaling(self) -> None:
        """workers = 1 vs 2 on the CPU-bound ``burn`` handler (see SCALING_DEFAULTS)."""
        a = self.args
        iterations = calibrate_burn(a.burn_ms)
        out: dict[str, Any] = {"iterations": iterations, "burn_ms": a.burn_ms}
        for w in (1, 2):
            out[f"workers={w}"] = {"rounds": [], "errors": []}
        self.results["scaling"] = out
        self.say(f"scaling: {iterations} loop turns ~ {a.burn_ms} ms of CPU per message")
        for r in range(a.rounds):
            with self.lock():
                for w in (1, 2):
                    run = RpcworkerDirect(
                        self.broker,
                        self.uid(f"burn{w}-"),
                        self.workdir,
                        handler="burn",
                        method="burn",
                        workers=w,
                        extra=f"[bench]\nburn_iterations = {iterations}\n",
                        # README's advice for CPU-bound handlers, the same for both sides:
                        # threads only fight over the GIL, and a small prefetch window
                        # keeps the last messages from queueing behind one busy process
                        default_options=SCALING_DEFAULTS,
                        binding_options=SCALING_BINDING,
                    )
                    try:
                        res = self.measure_drain(run, a.scale_n)
                    except Exception as exc:
                        self.fail(out[f"workers={w}"], f"round {r + 1}: {exc}")
                        continue
                    out[f"workers={w}"]["rounds"].append({**res, "round": r})
                    self.say(
                        f"scaling round {r + 1}/{a.rounds}: workers={w} {res['rate']:8.0f} msg/s"
                    )
                self.sweep()
        for w in (1, 2):
            rates = [x["rate"] for x in out[f"workers={w}"]["rounds"]]
            if rates:
                out[f"workers={w}"]["median"] = median(rates)

    # -- 2 and 3: calls -------------------------------------------------------------------

    def phase_calls(self, latency: bool, concurrency: bool) -> None:
        a = self.args
        if missing("oslo.messaging"):
            self.results["latency"] = {"skipped": missing("oslo.messaging")}
            return
        warnings.simplefilter("ignore")  # eventlet deprecation and friends
        import oslo_messaging as om
        from oslo_config import cfg

        lat: dict[str, Any] = {}
        conc: dict[str, Any] = {}
        with self.lock():
            rw = RpcworkerRpc(self.broker, self.uid("rpc"), self.workdir, handler="echo")
            oslo = OsloServer(self.broker, self.uid("oslo"), self.workdir)
            floor = FloorResponder(self.broker, self.uid("floor"), self.workdir)
            procs = [rw.start(self.env), oslo.start(self.env), floor.start(self.env)]
            transport = None
            pika_client: PikaCaller | None = None
            try:
                for run, proc in zip((rw, oslo, floor), procs, strict=True):
                    wait_consumers(self.broker, run.queue, 1, 120, proc.alive)
                # oslo.messaging 18 needs the global CONF parsed once; it has no public
                # "was it parsed?"
                if not cfg.CONF._args:  # noqa: SLF001
                    cfg.CONF([], project="rpcworker-bench")
                transport = om.get_rpc_transport(cfg.CONF, url=self.address.oslo_url)
                clients = {
                    "rpcworker": om.get_rpc_client(
                        transport, om.Target(topic=rw.topic, exchange=rw.exchange), timeout=30
                    ),
                    "oslo": om.get_rpc_client(
                        transport, om.Target(topic=oslo.topic, exchange=oslo.exchange), timeout=30
                    ),
                }
                callers: dict[str, Callable[[], Any]] = {
                    k: functools.partial(c.call, {}, "echo") for k, c in clients.items()
                }
                if latency:  # the floor: same client, a responder that does nothing else
                    callers["floor"] = functools.partial(
                        om.get_rpc_client(
                            transport,
                            om.Target(topic=floor.topic, exchange=floor.exchange),
                            timeout=30,
                        ).call,
                        {},
                        "echo",
                    )
                if latency and not missing("pika"):
                    pika_client = PikaCaller(self.address, rw.exchange, rw.topic)
                    callers["rpcworker-pika"] = pika_client.call
                if latency:
                    self.results["latency"] = lat
                    for key in callers:
                        lat[key] = {"rounds": []}
                    for r in range(a.rounds):
                        for key, call in callers.items():
                            for _ in range(WARMUP_CALLS):
                                call()
                            samples = []
                            for _ in range(a.calls):
                                start = time.perf_counter()
                                call()
                                samples.append((time.perf_counter() - start) * 1000)
                            res = {
                                "round": r,
                                "p50": percentile(samples, 50),
                                "p99": percentile(samples, 99),
                                "mean": statistics.fmean(samples),
                            }
                            lat[key]["rounds"].append(res)
                            self.say(
                                f"latency round {r + 1}/{a.rounds}: {key:<15} "
                                f"p50 {res['p50']:.2f} ms, p99 {res['p99']:.2f} ms"
                            )
                    for entry in lat.values():
                        entry["p50"] = median([x["p50"] for x in entry["rounds"]])
                        entry["p99"] = median([x["p99"] for x in entry["rounds"]])
                if concurrency:
                    self.results["concurrency"] = conc
                    for key in clients:
                        conc[key] = {"rounds": []}
                    for r in range(a.rounds):
                        for key in clients:
                            rate = concurrent_calls(
                                callers[key], a.threads, max(1, a.concurrent_calls // a.threads)
                            )
                            conc[key]["rounds"].append(rate)
                            self.say(
                                f"concurrency round {r + 1}/{a.rounds}: {key:<10} "
                                f"{rate:8.0f} calls/s ({a.threads} threads)"
                            )
                    for entry in conc.values():
                        entry["median"] = median(entry["rounds"])
            except BenchError as exc:
                self.fail(
                    self.results.setdefault("latency", lat),
                    f"calls: {exc}\n" + "\n".join(p.tail() for p in procs),
                )
            finally:
                if pika_client is not None:
                    pika_client.close()
                reply_q = None
                if transport is not None:
                    reply_q = getattr(transport._driver, "_reply_q", None)  # noqa: SLF001 - oslo's reply queue
                    with contextlib.suppress(Exception):
                        transport.cleanup()
                for proc in procs:
                    proc.stop()
                rw.cleanup()
                oslo.cleanup()
                floor.cleanup()
                if reply_q:
                    self.broker.delete_queues([reply_q])
                self.sweep()

    # -- 5: memory ------------------------------------------------------------------------

    def phase_memory(self) -> None:
        a = self.args
        total = a.rss_messages
        warm = min(1000, max(1, total // 10))
        out: dict[str, Any] = {"messages": total, "series": []}
        self.results["memory"] = out
        run = RpcworkerDirect(self.broker, self.uid("rss"), self.workdir, handler="echo")
        with self.lock():
            run.declare()
            proc = run.start(self.env)
            try:
                wait_consumers(self.broker, run.queue, 1, 120, proc.alive)
                time.sleep(2)
                out["start"] = rss_mb(proc.pid)
                sent = 0
                chunk = 10_000
                while sent < total:
                    batch = min(chunk, total - sent) if sent else warm
                    wait_until(
                        lambda: self.broker.counts(run.queue)[0] < chunk // 2,
                        600,
                        "the queue to go down",
                        alive=proc.alive,
                    )
                    sent += self.broker.publish_many(run.exchange, run.key, [ECHO_BODY] * batch)
                    if sent == warm:
                        wait_until(
                            lambda: self.broker.counts(run.queue)[0] == 0,
                            120,
                            "the warm-up messages",
                            alive=proc.alive,
                        )
                        self.acked_by(run.queue)
                        time.sleep(1)
                        out["warm"] = rss_mb(proc.pid)
                    out["series"].append((sent, round(rss_mb(proc.pid), 1)))
                wait_until(
                    lambda: self.broker.counts(run.queue)[0] == 0,
                    600,
                    "the queue to drain",
                    alive=proc.alive,
                )
                self.acked_by(run.queue, timeout=60)
                time.sleep(2)
                out["end"] = rss_mb(proc.pid)
                out["growth"] = out["end"] - out["start"]
                out["growth_warm"] = out["end"] - out.get("warm", out["start"])
                self.say(
                    f"memory: RSS {out['start']:.1f} MB after start, "
                    f"{out.get('warm', float('nan')):.1f} MB after {warm} messages, "
                    f"{out['end']:.1f} MB after {total}: growth {out['growth']:+.1f} MB"
                )
            except BenchError as exc:
                self.fail(out, f"memory: {exc}; log {run.log()}:\n{proc.tail()}")
            finally:
                proc.stop()
                run.cleanup()

    # -- 6: start-up and broker restart -------------------------------------------------

    def phase_startup(self) -> None:
        a = self.args
        out: dict[str, Any] = {}
        self.results["startup"] = out
        for w in (1, 2):
            out[f"workers={w}"] = {"rounds": []}
        for r in range(a.rounds):
            with self.lock():
                for w in (1, 2):
                    run = RpcworkerDirect(
                        self.broker, self.uid(f"up{w}-"), self.workdir, handler="echo", workers=w
                    )
                    listener = NotifyListener(self.workdir / f"n{self.seq}")
                    proc = run.start({**self.env, "NOTIFY_SOCKET": listener.path})
                    try:
                        t_ready = listener.wait_for("READY=1", 120)
                        out[f"workers={w}"]["rounds"].append(t_ready - proc.started)
                        self.say(
                            f"startup round {r + 1}/{a.rounds}: workers={w} READY=1 "
                            f"after {t_ready - proc.started:.2f} s"
                        )
                    except BenchError as exc:
                        self.fail(out[f"workers={w}"], f"startup: {exc}\n{proc.tail()}")
                    finally:
                        proc.stop()
                        listener.close()
                        run.cleanup()
        for entry in out.values():
            if entry["rounds"]:
                entry["median"] = median(entry["rounds"])
        if not a.no_broker_restart:
            with self.lock():
                self.broker_restart(out)

    def broker_restart(self, out: dict[str, Any]) -> None:
        res: dict[str, Any] = {}
        out["broker_restart"] = res
        run = RpcworkerDirect(self.broker, self.uid("restart"), self.workdir, handler="echo")
        listener = NotifyListener(self.workdir / f"n{self.seq}")
        proc = run.start({**self.env, "NOTIFY_SOCKET": listener.path})
        try:
            listener.wait_for("READY=1", 120)
            wait_consumers(self.broker, run.queue, 1, 60, proc.alive)
            stopped = rabbitmqctl("stop_app")
            if stopped.returncode != 0:
                raise BenchError(f"rabbitmqctl stop_app: {stopped.stderr.strip()}")
            t_stopped = time.monotonic()
            starting = rabbitmqctl_async("start_app")
            t_up = wait_until(self.broker_answers, 180, "the broker to come back", interval=0.02)
            self.broker.reconnect()
            t_consuming = wait_consumers(self.broker, run.queue, 1, 180, proc.alive)
            t_ready = listener.wait_for("READY=1", 180, since=t_stopped)
            starting.wait(timeout=180)
            res.update(down=t_up - t_stopped, consuming=t_consuming - t_up, ready=t_ready - t_up)
            self.say(
                f"broker restart: consuming again {res['consuming']:.2f} s after the "
                f"broker answered (READY=1 after {res['ready']:.2f} s)"
            )
        except BenchError as exc:
            self.fail(res, f"broker restart: {exc}\n{proc.tail()}")
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup", timeout=180)
            with contextlib.suppress(Exception):
                self.broker.reconnect()
            proc.stop()
            listener.close()
            run.cleanup()

    def broker_answers(self) -> float | None:
        """The monotonic time at which a fresh AMQP connection succeeded, or None (one
        attempt, no retries)."""
        import amqp

        conn = amqp.Connection(
            host=f"{self.address.host}:{self.address.port}",
            userid=self.address.user,
            password=self.address.password,
            connect_timeout=1,
        )
        try:
            conn.connect()
            return time.monotonic()
        except Exception:
            return None
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    # -- profile ------------------------------------------------------------------------

    def phase_profile(self) -> None:
        """One more rpcworker drain (direct binding, bench_echo) under py-spy (GIL-holding
        samples only), summarised as the functions that hold the GIL the longest."""
        a = self.args
        out: dict[str, Any] = {"messages": a.profile_n}
        self.results["profile"] = out
        spy_bin = shutil.which(
            "py-spy",
            path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        )
        if spy_bin is None:
            out["skipped"] = "py-spy not installed (pip install '.[bench]')"
            self.say(f"profile: skipped: {out['skipped']}")
            return
        raw = self.workdir / "profile-raw.txt"
        run = RpcworkerDirect(self.broker, self.uid("prof"), self.workdir)
        with self.lock():
            try:
                self.prefill(run, a.profile_n)
            except Exception as exc:
                run.cleanup()
                self.fail(out, f"profile: {exc!r}")
                return
            probe_dir = self.workdir / f"probe-{run.uid}"
            probe_dir.mkdir()
            proc = run.start({**self.env, PROBE_ENV: str(probe_dir)})
            spy = None
            try:
                t0 = wait_consumers(self.broker, run.queue, 1, 120, proc.alive)
                spy = subprocess.Popen(
                    [
                        spy_bin,
                        "record",
                        "--pid",
                        str(proc.pid),
                        "--rate",
                        "250",
                        "--gil",
                        "--threads",
                        "--nolineno",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                wait_probes(
                    probe_dir, a.profile_n, max(120.0, a.profile_n / 50), proc.alive, times=False
                )
                t_end = time.monotonic()
                spy.send_signal(signal.SIGINT)
                _, err = spy.communicate(timeout=60)
                if not raw.exists():
                    raise BenchError(f"py-spy wrote nothing: {err.strip()[-300:]}")
                out["rate"] = a.profile_n / (t_end - t0)
                out.update(summarise_profile(raw))
                out["raw"] = str(raw)
                self.say(
                    f"profile: {out['samples']} GIL-holding samples, top: "
                    + ", ".join(f"{f} {pct:.0f}%" for f, pct in out["self"][:3])
                )
            except Exception as exc:
                self.fail(out, f"profile: {exc!r}\n{proc.tail()}")
            finally:
                if spy is not None and spy.poll() is None:
                    spy.kill()
                proc.stop()
                run.cleanup()

    # -- the whole run --------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        self.say(f"rpcworker benchmark: N={a.n}, {a.rounds} round(s), work dir {self.workdir}")
        facts = collect_facts(self.broker)
        try:
            if "drain" in a.phases:
                self.phase_drain()
            if "latency" in a.phases or "concurrency" in a.phases:
                self.phase_calls("latency" in a.phases, "concurrency" in a.phases)
            if "scaling" in a.phases:
                self.phase_scaling()
            if "memory" in a.phases:
                self.phase_memory()
            if "startup" in a.phases:
                self.phase_startup()
            if "profile" in a.phases:
                self.phase_profile()
        finally:
            Proc.stop_all()
            self.sweep()
            self.broker.close()
        from benchmarks.report import render

        text = render(self.results, facts, a, time.monotonic() - self.started)
        print()
        print(text.split("\n## Method", 1)[0])
        Path(a.results).write_text(text)
        if a.json:
            Path(a.json).write_text(
                json.dumps({"args": vars(a), "results": self.results}, indent=1, default=str)
            )
        self.say(f"wrote {a.results}")
        if self.failed or a.keep_workdir:
            self.say(f"contender logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 1 if self.failed else 0


class PikaCaller:
    """Plain AMQP RPC with pika: a JSON request, reply_to = RabbitMQ direct reply-to."""

    def __init__(self, address: BrokerAddress, exchange: str, routing_key: str) -> None:
        import pika

        self.pika = pika
        self.conn = pika.BlockingConnection(pika.URLParameters(address.pika_url))
        self.channel = self.conn.channel()
        self.exchange, self.routing_key = exchange, routing_key
        self.corr = ""
        self.answer: bytes | None = None
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        if props.correlation_id == self.corr:
            self.answer = body

    def call(self) -> Any:
        self.corr, self.answer = uuid.uuid4().hex, None
        self.channel.basic_publish(
            self.exchange,
            self.routing_key,
            ECHO_BODY,
            self.pika.BasicProperties(
                content_type=JSON, reply_to="amq.rabbitmq.reply-to", correlation_id=self.corr
            ),
        )
        deadline = time.monotonic() + 30
        while self.answer is None:
            if time.monotonic() > deadline:
                raise BenchError("no plain AMQP RPC reply in 30 s")
            self.conn.process_data_events(time_limit=1)
        reply = json.loads(self.answer)
        if "result" not in reply:
            raise BenchError(f"plain AMQP RPC error reply: {reply}")
        return reply["result"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def concurrent_calls(call: Callable[[], Any], threads: int, per_thread: int) -> float:
    """calls/s of ``threads`` threads making ``per_thread`` calls each, started together."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(per_thread):
                call()
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise BenchError(f"{len(errors)} client thread(s) failed: {errors[0]!r}")
    return threads * per_thread / elapsed


def summarise_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> where the GIL was held: per thread group, per
    function (self and inclusive), in % of all GIL-holding samples. The harness's own probe
    thread is left out."""
    from collections import Counter

    threads: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip() if ":" in frames[0] else "MainThread"
        if "bench-probe" in thread:
            continue
        n = int(count)
        total += n
        group = "handler threads" if thread.startswith("rpcworker-handler") else thread
        threads[group] += n
        calls = frames[1:]
        if calls:
            own[calls[-1]] += n
            where = calls[-1].rpartition("(")[2].rstrip(")")
            packages[where.split("/")[0] if "/" in where else where] += n
        for f in set(calls):
            inclusive[f] += n

    def pct(c: Counter[str], limit: int = top) -> list[tuple[str, float]]:
        return [(f, 100 * n / total) for f, n in c.most_common(limit)] if total else []

    # leave out the frames every sample has (the interpreter and the daemon's main loop)
    branches = Counter({f: n for f, n in inclusive.items() if n < 0.95 * total})
    return {
        "samples": total,
        "threads": pct(threads),
        "packages": pct(packages, 8),
        "self": pct(own),
        "inclusive": pct(branches),
    }


def rabbitmqctl_async(*args: str) -> Any:
    return subprocess.Popen(
        ["rabbitmqctl", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if str(PLUGIN) not in sys.path:  # the probe, for the clients of Celery and friends
        sys.path.append(str(PLUGIN))
    args.command = "python -m benchmarks.run " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)
    )
    args.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.hostname = socket.gethostname()
    try:
        harness = Harness(args)
    except Exception as exc:
        print(
            f"benchmarks: cannot reach RabbitMQ at {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 2
    return harness.run()


if __name__ == "__main__":
    sys.exit(main())
