"""The report: the targets of issue 4 judged, and every phase's table (Markdown)."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from benchmarks.infra import Facts


def _f(value: float | None, fmt: str = "{:.0f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a short row (e.g. a skipped contender) is padded with empty cells."""
    rows = [r + [""] * (len(headers) - len(r)) for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _pairs(a: dict[str, Any], b: dict[str, Any], key: str) -> list[float]:
    """Per-round ratios a/b: the two ran back to back within each round."""

    def by_round(entry: dict[str, Any]) -> dict[int, float]:
        return {
            (x.get("round", i) if isinstance(x, dict) else i): (
                x[key] if isinstance(x, dict) else x
            )
            for i, x in enumerate(entry.get("rounds", []))
        }

    ra, rb = by_round(a), by_round(b)
    return [ra[k] / rb[k] for k in sorted(ra) if rb.get(k)]


def targets(results: dict[str, Any], args: argparse.Namespace) -> list[list[str]]:
    """Each ratio target is judged on the median of the per-round ratios (a slow spell of the
    machine hits both sides of a round alike); the ratio of the medians is shown too."""
    rows: list[list[str]] = []

    def add(name: str, value: float | None, goal: str, ok: bool, detail: str) -> None:
        verdict = (
            "not measured"
            if value is None
            else "(not a target)"
            if goal == "(info)"
            else "met"
            if ok
            else "MISSED"
        )
        rows.append([name, _f(value, "{:.2f}"), goal, verdict, detail])

    def compare(
        name: str,
        a: dict[str, Any],
        b: dict[str, Any],
        key: str,
        summary: str,
        goal: str,
        ok: Any,
        note: str = "",
    ) -> None:
        pairs = _pairs(a, b, key)
        of_medians = _ratio(a.get(summary), b.get(summary))
        value = statistics.median(pairs) if pairs else of_medians
        detail = note
        if pairs:
            detail += "per round " + ", ".join(f"{p:.2f}" for p in pairs)
        if of_medians is not None:
            detail += f"; ratio of the medians {of_medians:.2f}"
        add(name, value, goal, value is not None and ok(value), detail)

    drain = results.get("drain", {})
    rw, rpc = drain.get("rpcworker", {}), drain.get("rpcworker-rpc", {})
    compare(
        "cast drain ÷ bare kombu",
        rw,
        drain.get("kombu", {}),
        "rate",
        "median",
        "≥ 1.0",
        lambda v: v >= 1.0,
    )
    compare(
        "cast drain ÷ bare py-amqp",
        rw,
        drain.get("pyamqp", {}),
        "rate",
        "median",
        "≥ 1.2",
        lambda v: v >= 1.2,
    )
    same = rpc.get("median") is not None
    compare(
        "cast drain ÷ oslo.messaging",
        rpc if same else rw,
        drain.get("oslo", {}),
        "rate",
        "median",
        "≥ 3.0",
        lambda v: v >= 3.0,
        "rpc binding, the same oslo casts: " if same else "direct binding: ",
    )
    compare(
        "cast drain ÷ Celery",
        rw,
        drain.get("celery", {}),
        "rate",
        "median",
        "≥ 2.0",
        lambda v: v >= 2.0,
    )
    if "rpcworker-notify" in drain:  # not a target: notifications, the same oslo messages
        compare(
            "notification drain ÷ oslo.messaging listener",
            drain.get("rpcworker-notify", {}),
            drain.get("oslo-notify", {}),
            "rate",
            "median",
            "(info)",
            lambda v: True,
        )
    lat = results.get("latency", {})
    compare(
        "call p50 ÷ oslo server's (same oslo client)",
        lat.get("rpcworker", {}),
        lat.get("oslo", {}),
        "p50",
        "p50",
        "≤ 0.6",
        lambda v: v <= 0.6,
    )
    if "floor" in lat:  # not a target: how close rpcworker is to the stack's floor
        compare(
            "call p50 ÷ the floor (inline responder, same client)",
            lat.get("rpcworker", {}),
            lat.get("floor", {}),
            "p50",
            "p50",
            "(info)",
            lambda v: True,
        )
    sc = results.get("scaling", {})
    compare(
        "CPU-bound: workers=2 ÷ workers=1",
        sc.get("workers=2", {}),
        sc.get("workers=1", {}),
        "rate",
        "median",
        "≥ 1.7",
        lambda v: v >= 1.7,
    )
    mem = results.get("memory", {})
    g = mem.get("growth")
    add(
        f"RSS growth over {mem.get('messages', args.rss_messages):,} messages (MB)",
        g,
        "< 5",
        g is not None and g < 5,
        f"after warm-up: {_f(mem.get('growth_warm'), '{:+.1f}')} MB" if g is not None else "",
    )
    return rows


def render(results: dict[str, Any], facts: Facts, args: argparse.Namespace, elapsed: float) -> str:
    out = [
        "# rpcworker benchmark results",
        "",
        f"Written by `{args.command}` on {args.date} ({elapsed / 60:.1f} min). "
        'Run it again with `make bench` (see README.md, "Performance"); the method is '
        "at the end.",
        "",
    ]
    out += ["## Machine and versions", ""]
    out.append(table(["machine", ""], [[k, v] for k, v in facts.machine.items()]))
    out.append("")
    out.append(table(["software", "version"], [[k, v] for k, v in facts.versions.items()]))
    out += ["", "## Parameters", ""]
    out.append(
        table(
            ["parameter", "value"],
            [
                ["rounds (contenders alternated within each)", str(args.rounds)],
                ["N, messages per drain run", f"{args.n:,}"],
                ["sequential calls per latency run", f"{args.calls:,}"],
                [
                    "concurrent calls per run / client threads",
                    f"{args.concurrent_calls:,} / {args.threads}",
                ],
                ["CPU-bound messages per scaling run", f"{args.scale_n:,}"],
                ["messages of the memory test", f"{args.rss_messages:,}"],
                ["broker restart test", "no" if args.no_broker_restart else "yes"],
            ],
        )
    )
    out += [
        "",
        "## Targets (issue 4)",
        "",
        "Each ratio is the median of the per-round ratios (the two sides of a ratio run "
        "back to back in every round, so a slow spell of the machine hits both); the ratio "
        "of the medians is shown beside it.",
        "",
    ]
    out.append(table(["target", "measured", "goal", "verdict", "detail"], targets(results, args)))

    drain = results.get("drain")
    if drain:
        out += [
            "",
            "## 1. Cast drain rate",
            "",
            f"{args.n:,} no-op casts prefilled, then the contender started; msg/s from the "
            "moment its consumer is on the queue to the moment the last message was "
            "handled. *Acks*: whether the broker showed every message acked when the "
            "harness looked (about 0.5 s after the last one was handled), or how long "
            "after the last message the last ack arrived.",
            "",
        ]
        base = drain.get("rpcworker", {}).get("median")
        rows = []
        for entry in drain.values():
            if "skipped" in entry:
                rows.append([entry["label"], "skipped", entry["skipped"], "", "", ""])
                continue
            rounds = entry.get("rounds", [])
            m = entry.get("median")
            rows.append(
                [
                    entry["label"],
                    _f(m),
                    ", ".join(_f(x["rate"]) for x in rounds)
                    + (f" ({len(entry['errors'])} failed)" if entry.get("errors") else ""),
                    _f(_ratio(base, m), "{:.2f}×"),
                    acks(rounds),
                    _f(median_of(rounds, "rss_mb"), "{:.0f}"),
                ]
            )
        out.append(
            table(
                [
                    "contender",
                    "median msg/s",
                    "rounds",
                    "rpcworker ÷ it",
                    "acks",
                    "RSS at end (MB)",
                ],
                rows,
            )
        )
    lat = results.get("latency")
    if lat and "skipped" not in lat:
        labels = {
            "rpcworker": "oslo.messaging client → rpcworker (rpc binding, echo)",
            "oslo": "oslo.messaging client → oslo.messaging server",
            "rpcworker-pika": "pika plain AMQP RPC (direct reply-to) → rpcworker",
            "floor": "oslo.messaging client → inline kombu responder (the floor)",
        }
        out += [
            "",
            "## 2. RPC call latency",
            "",
            f"{args.calls:,} sequential calls per round (after {20} warm-up calls); "
            "medians of the rounds' percentiles, in ms.",
            "",
        ]
        rows = [
            [
                labels.get(k, k),
                _f(v.get("p50"), "{:.2f}"),
                _f(v.get("p99"), "{:.2f}"),
                ", ".join(f"{x['p50']:.2f}/{x['p99']:.2f}" for x in v.get("rounds", [])),
            ]
            for k, v in lat.items()
            if isinstance(v, dict) and "rounds" in v
        ]
        out.append(table(["client → server", "p50 ms", "p99 ms", "rounds (p50/p99)"], rows))
    conc = results.get("concurrency")
    if conc:
        out += [
            "",
            "## 3. Concurrent calls",
            "",
            f"{args.threads} client threads sharing one oslo.messaging transport, "
            f"{args.concurrent_calls:,} calls per round.",
            "",
        ]
        rows = [
            [k, _f(v.get("median")), ", ".join(_f(x) for x in v["rounds"])] for k, v in conc.items()
        ]
        out.append(table(["server", "median calls/s", "rounds"], rows))
    sc = results.get("scaling")
    if sc:
        out += [
            "",
            "## 4. Scaling: CPU-bound handler",
            "",
            f"{args.scale_n:,} messages to the `burn` handler (benchmarks/plugin), "
            f"{sc['iterations']:,} turns of a pure-Python loop ≈ {sc['burn_ms']} ms of "
            "CPU each (calibrated in the harness"
            + (
                f"; with `workers = 1` a message took {1000 / w1:.2f} ms end to end"
                if (w1 := sc["workers=1"].get("median"))
                else ""
            )
            + "); msg/s from all worker processes consuming to the last message handled.",
            "",
        ]
        rows = [
            [
                k,
                _f(sc[k].get("median")),
                ", ".join(_f(x["rate"]) for x in sc[k]["rounds"]),
                acks(sc[k]["rounds"]),
            ]
            for k in ("workers=1", "workers=2")
        ]
        out.append(table(["rpcworker", "median msg/s", "rounds", "acks"], rows))
    mem = results.get("memory")
    if mem:
        out += [
            "",
            "## 5. Memory",
            "",
            "RSS of the rpcworker process and its children (VmRSS), `echo` handler, "
            "direct binding, shipped defaults.",
            "",
        ]
        rows = [
            ["after start (consuming, idle 2 s)", _f(mem.get("start"), "{:.1f}")],
            ["after the warm-up messages", _f(mem.get("warm"), "{:.1f}")],
            [f"after {mem['messages']:,} messages", _f(mem.get("end"), "{:.1f}")],
            ["growth from start", _f(mem.get("growth"), "{:+.1f}")],
            ["growth from warm-up", _f(mem.get("growth_warm"), "{:+.1f}")],
        ]
        out.append(table(["when", "RSS MB"], rows))
        if mem.get("series"):
            out += [
                "",
                "RSS (MB) as messages were published: "
                + ", ".join(f"{n:,}: {r}" for n, r in mem["series"]),
            ]
    up = results.get("startup")
    if up:
        out += ["", "## 6. Start-up and broker restart", ""]
        rows = [
            [
                f"start → READY=1, {k}",
                _f(v.get("median"), "{:.2f}"),
                ", ".join(f"{x:.2f}" for x in v.get("rounds", [])),
            ]
            for k, v in up.items()
            if k.startswith("workers")
        ]
        br = up.get("broker_restart")
        if br and "consuming" in br:
            rows.append(
                [
                    "broker answering again → consuming again (workers=1)",
                    f"{br['consuming']:.2f}",
                    f"broker down {br['down']:.1f} s",
                ]
            )
            rows.append(["broker answering again → READY=1 again", f"{br['ready']:.2f}", ""])
        elif br:
            rows.append(["broker restart", "failed", "; ".join(br.get("errors", []))])
        else:
            rows.append(["broker restart", "not run", "--no-broker-restart"])
        out.append(table(["what", "seconds (median)", "rounds"], rows))
    prof = results.get("profile")
    if prof:
        out += ["", "## Where rpcworker's time goes (py-spy)", ""]
        if "skipped" in prof:
            out.append(f"Not profiled: {prof['skipped']}.")
        elif prof.get("samples"):
            out.append(
                f"{prof['messages']:,} casts drained by rpcworker (direct binding, `bench_echo`, "
                f"{prof['rate']:,.0f} msg/s under the profiler) while `py-spy record --gil` "
                f"sampled it at 250 Hz: {prof['samples']:,} samples of the thread holding the "
                "GIL, i.e. of the one core's worth of Python that bounds the drain rate. "
                "Share of those samples:"
            )
            out += [
                "",
                table(
                    ["thread", "% of GIL samples"], [[t, f"{p:.0f}"] for t, p in prof["threads"]]
                ),
            ]
            out += [
                "",
                table(
                    ["self time in (module)", "%"],
                    [[f"`{m}`", f"{p:.0f}"] for m, p in prof.get("packages", [])],
                ),
            ]
            out += [
                "",
                table(
                    ["function (self time)", "%"], [[f"`{f}`", f"{p:.1f}"] for f, p in prof["self"]]
                ),
            ]
            out += [
                "",
                table(
                    ["function (inclusive, below the main loop)", "%"],
                    [[f"`{f}`", f"{p:.1f}"] for f, p in prof["inclusive"]],
                ),
            ]
    errors = [
        e
        for section in results.values()
        if isinstance(section, dict)
        for entry in ([section] + [v for v in section.values() if isinstance(v, dict)])
        for e in entry.get("errors", [])
    ]
    if errors:
        out += ["", "## Failures", ""] + [f"- {e}" for e in dict.fromkeys(errors)]
    out += ["", METHOD]
    return "\n".join(out) + "\n"


def acks(rounds: list[dict[str, Any]]) -> str:
    if not rounds:
        return "–"
    tails = [x["ack_tail"] for x in rounds if x.get("ack_tail") is not None]
    if not tails:
        return "all acked at the check"
    return f"{len(tails)} of {len(rounds)} round(s): last ack " + ", ".join(
        f"+{t:.1f} s" for t in tails
    )


def median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = sorted(x[key] for x in rounds if key in x)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


METHOD = """## Method

- **Everything on the local broker, every contender a subprocess**, started fresh for each
  drain run. Queue and exchange names are unique to the run (`rwbench-<id>-...`) and deleted
  afterwards. Within a round the contenders run back to back in a fixed order (A B C ...),
  and each number reported is the median of the rounds, so a noisy moment on this shared
  machine moves one round, not the result. A target ratio is the median of the per-round
  ratios (both sides of a round ran back to back, under the same load); the ratio of the
  medians is shown beside it.
- **Same work for every drain contender**: each handler calls the probe of
  `benchmarks/plugin/rpcworker_benchplugin/probe.py` (append `time.monotonic()` to a list)
  and returns its arguments. rpcworker runs it as the `bench_echo` handler (its built-in
  `echo` plus the tick). Messages: rpcworker (`direct` binding) and the bare kombu and
  py-amqp consumers get the same persistent JSON casts `{"method": "echo", "args": {}}` on
  a durable queue; rpcworker's `rpc` binding and the oslo.messaging server get the same
  oslo casts (envelope 2.0, byte for byte what `RPCClient.cast({}, "echo")` sends, on
  oslo's default non-durable topic queue); Celery gets `task.apply_async()`, dramatiq
  `broker.enqueue()`, nameko events, as their own clients send them. Settings: rpcworker
  `workers = 1` and shipped defaults (prefetch 64, 16 handler threads, ack after the
  handler); bare kombu and bare py-amqp (`amqp.Connection`, no kombu) prefetch 64,
  `json.loads`, one `basic.ack` per message; oslo.messaging defaults (threading executor,
  unlimited prefetch, ack on receipt); Celery `-P solo`, `task_acks_late`,
  `worker_prefetch_multiplier = 100`, without mingle/gossip/heartbeat and remote control;
  dramatiq `--processes 1` (8 threads); nameko defaults (10 workers).
- **Drain timing**: the queue is prefilled with N messages before the contender starts, so
  start-up is excluded: the clock starts when the broker shows the contender's consumer(s)
  on the queue (a passive `queue.declare` every 2 ms; the midpoint of the last miss and the
  first hit) and stops at the time of the last handled message reported by the probe.
  Messages handled before the clock started (with `workers = 2`, by the first worker
  while the second was still connecting) are not counted. Then the harness checks that
  nothing is ready (passive declare) or unacknowledged (`rabbitmqctl list_queues`, whose
  snapshot lands about 0.5 s after the last message); when acks are still outstanding it
  polls until they are gone and reports that delay in the *acks* column (rabbitmqctl's
  resolution, about 0.6 s, is too coarse to time a drain with, so acks do not move the
  msg/s figure; a contender that sits on its last acks shows it there).
- **Calls**: the servers run for the whole phase; one oslo.messaging transport in the
  harness calls `echo` on rpcworker's `rpc` binding (built-in `echo` handler) and on the
  oslo.messaging server, alternately, 20 warm-up calls then the timed ones; the pika client
  does plain AMQP RPC (JSON body, `reply_to` = `amq.rabbitmq.reply-to`, `correlation_id`)
  against the same rpcworker binding. Concurrency: the same oslo client from N threads.
- **Scaling**: the `burn` handler of `benchmarks/plugin` spins a pure-Python loop
  calibrated in the harness to the requested CPU time per message; `workers = 1` and
  `workers = 2` drain the same number of messages, timed as above, both with the settings
  README gives for CPU-bound handlers (`executor_thread_pool_size = 1`,
  `prefetch_count = 4`: more threads only contend for the GIL, and a small prefetch window
  keeps the last messages from waiting behind one busy process).
- **Memory**: rpcworker with the built-in `echo` handler; VmRSS of the process and its
  children after it consumes and has idled 2 s, after a warm-up, and after all messages
  (published in chunks of 10,000 while it consumes) are drained and acked.
- **Start-up**: the harness binds a NOTIFY_SOCKET, starts rpcworker with it and times
  `READY=1` from the `exec`. **Broker restart**: `rabbitmqctl stop_app`, `start_app`
  (always restarted, even on failure); timed from the moment a new AMQP connection
  succeeds again to the moment rpcworker's consumer is back on its queue (and to its next
  `READY=1`); that includes rpcworker's reconnect back-off (`reconnect_interval_*`).
"""
