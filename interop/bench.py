"""Throughput/latency/memory benchmark of an AMQP 0-9-1 broker, optionally A/B.

    .venv/bin/python interop/bench.py --url amqp://guest:guest@127.0.0.1:5673/
    .venv/bin/python interop/bench.py --url URL_A --compare URL_B --all --backlog 200000

Each scenario prints one JSON line on stdout (per-run lines go to stderr).  With
--compare the scenario runs alternately on A and B (A, B, A, B, ...) so slow
drift of the machine hits both alike; medians are reported with A/B ratios in a
markdown table, which is also appended, with every JSON line, to --out.

Scenarios (256-byte bodies, fresh uniquely named queues, deleted afterwards):
  publish           transient, no confirms; ends when the queue holds them all
  publish_confirm   confirms, at most 1,000 unconfirmed
  consume           drain a pre-filled queue: prefetch 100, one basic.ack
                    (multiple=False) per message, the acks for one read sent
                    together (like perf-test's default, pipelined)
  e2e               producer + consumer on one queue, rate at the consumer
  latency_1k/5k/20k open loop at 1,000/5,000/20,000 msgs/s: message i is sent
                    at its scheduled time and stamped with it, latency = receive
                    time - scheduled time (no coordinated omission); p50, p99,
                    p99.9, max; publisher and consumer in their own processes
  parallel_6/32     6 / 32 producer/consumer pairs, own queues and connections;
                    aggregate deliveries/s
  large_64k/1m      producer + consumer, 64 KiB / 1 MiB bodies; msgs/s and MB/s
  fanout            fanout exchange, 10 queues, a consumer each; deliveries/s
  topic             topic exchange, 10,000 bindings on 4 queues, half the keys
                    match; ends when a marker published last has been routed
  persistent        delivery_mode 2, durable queue, confirms (window 1,000)
  idle_connections  1,000 handshakes; connects/s and broker RSS per connection
  backlog           N queued messages: broker RSS per message, drain rate
  aiopika_publish   reference: a plain aio-pika publish loop
  stream_publish[_4k], stream_consume_1/10
                    streams: confirmed publish and disk footprint, reads from
                    `first` by 1 / 10 consumers (see bench_streams.py)
Default: publish publish_confirm consume e2e; --all: everything.

CPU columns are in cores over the timed phase: the generator's own processes
(a WARNING goes to stderr if one used > 90% of a core: then the generator may
be the bottleneck), the broker's (from /proc/PID/stat; the PID is whoever
listens on the URL's port unless --broker-pid/--compare-pid say otherwise),
and everything else on the machine (neighbours' noise).

The load comes from `loadgen` (raw sockets, pre-encoded frames, forked worker
processes), not from a general client; the `aiopika_publish` scenario measures
an aio-pika loop as the reference point that the lean generator must beat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

try:
    from interop import bench_open_loop, bench_streams, loadgen
    from interop import bench_scenarios as sc
except ImportError:  # run as a script: interop/ itself is on sys.path
    import bench_open_loop  # type: ignore[no-redef]
    import bench_scenarios as sc  # type: ignore[no-redef]
    import bench_streams  # type: ignore[no-redef]
    import loadgen  # type: ignore[no-redef]

# One registry for the run: the classic scenarios and the open-loop/parallel/large ones.
sc.SCENARIOS.update(bench_open_loop.SCENARIOS)
sc.METRICS.update(bench_open_loop.METRICS)
sc.SCENARIOS.update(bench_streams.SCENARIOS)
sc.METRICS.update(bench_streams.METRICS)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Between runs, wait until the broker is idle (queue deletion, GC, a backlog
# left by a failed run) so that one run's leftovers are not charged to the
# next; without a broker PID just pause.
SETTLE_SECONDS = 1.0
IDLE_CPU_SHARE = 0.1
IDLE_MAX_WAIT = 30.0


class ScenarioTimeoutError(Exception):
    """The hard per-scenario time cap expired."""


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    raise ScenarioTimeoutError("hard time cap reached")


def cap_for(scenario: str, opts: sc.Options) -> float:
    """Hard cap in seconds; the backlog scenario grows with the backlog size."""
    if scenario == "backlog":
        return opts.cap + opts.backlog / 10_000
    return opts.cap


def run_once(
    scenario: str, url: loadgen.AmqpUrl, pid: int | None, opts: sc.Options, round_no: int, side: str
) -> dict[str, Any]:
    """One bounded run of one scenario; errors become an "error" field."""
    cap = cap_for(scenario, opts)
    run_opts = sc.Options(**{**vars(opts), "cap": cap})
    ctx = sc.Ctx(url, run_opts, pid, scenario=scenario)
    record: dict[str, Any] = {
        "scenario": scenario,
        "url": url.masked(),
        "side": side,
        "round": round_no,
    }
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cap)
    try:
        record.update(sc.SCENARIOS[scenario](ctx))
    except Exception as exc:
        record.update(ctx.partial)
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            ctx.cleanup()
        except Exception as exc:
            record["cleanup_error"] = f"{type(exc).__name__}: {exc}"
    warn_if_generator_bound(record)
    return record


def warn_if_generator_bound(record: dict[str, Any]) -> None:
    """Flag runs where a generator process was close to a full core.

    Not for the aio-pika reference, whose point is to be client-bound.
    """
    if record["scenario"] == "aiopika_publish":
        return
    shares = record.get("generator_cpu_per_process") or {}
    if not shares and "generator_cpu_share" in record:
        shares = {"main": record["generator_cpu_share"]}
    busy = {k: v for k, v in shares.items() if v > 0.9}
    if busy:
        print(
            f"WARNING: {record['scenario']} on {record['url']}: generator process(es) "
            f"{busy} used >90% of a core; the generator may be the bottleneck",
            file=sys.stderr,
        )


def wait_broker_idle(pid: int | None) -> None:
    """Sleep until the broker used < 10% of a core over 0.5 s (at most 30 s)."""
    time.sleep(SETTLE_SECONDS)
    deadline = time.monotonic() + IDLE_MAX_WAIT
    while pid is not None and time.monotonic() < deadline:
        before = sc.proc_cpu_seconds(pid)
        time.sleep(0.5)
        after = sc.proc_cpu_seconds(pid)
        if before is None or after is None or (after - before) / 0.5 < IDLE_CPU_SHARE:
            return
    if pid is not None:
        print(f"WARNING: broker {pid} still busy after {IDLE_MAX_WAIT:.0f}s", file=sys.stderr)


def warm_up(url: loadgen.AmqpUrl, pid: int | None, opts: sc.Options) -> None:
    """An untimed small publish+consume run: the first run on a fresh broker
    pays one-off costs (code loading, allocator growth) that would bias A/B.
    Kept small (10k messages) so it does not pre-grow the heap that the
    backlog scenario measures."""
    warm = sc.Options(**{**vars(opts), "duration": 1.0, "prefill": 10_000})
    record = run_once("consume", url, pid, warm, 0, "warm-up")
    if "error" in record:
        print(f"warm-up on {url.masked()}: {record['error']}", file=sys.stderr)
    wait_broker_idle(pid)


# ----------------------------------------------------------------- summaries


# Medians of these are reported too: they say how much of the machine the
# generator, the broker and everything else used during the timed phase.
CPU_FIELDS = ("generator_cpu_share", "broker_cpu_share", "other_cpu_share")


def median_record(records: list[dict[str, Any]], scenario: str) -> dict[str, Any]:
    """The run with the median headline value, with each headline replaced by its median.

    RSS figures take the max instead: later rounds can reuse memory the
    broker kept from earlier ones, which would understate the cost.
    """
    ok = [r for r in records if "error" not in r]
    if not ok:
        return {**records[-1], "rounds": len(records)}
    key = sc.metrics_for(scenario)[0][0]
    ranked = sorted(ok, key=lambda r: r.get(key) or 0)
    summary = dict(ranked[(len(ranked) - 1) // 2])
    fields = [f for f, _label, _higher in sc.metrics_for(scenario)]
    for field in [*fields, *CPU_FIELDS]:
        values = [r[field] for r in ok if r.get(field) is not None]
        if values:
            pick = max(values) if field.startswith("rss_") else statistics.median(values)
            summary[field] = round(pick, 3)
            if field in fields:
                summary[f"{field}_runs"] = values
    summary.pop("round", None)
    summary["rounds"] = len(records)
    summary["failed_rounds"] = len(records) - len(ok)
    return summary


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return str(value)


def spread(summary: dict[str, Any], field: str) -> str:
    """min..max over the rounds: how far to trust the median."""
    runs = summary.get(f"{field}_runs") or []
    return f"{fmt(min(runs))}..{fmt(max(runs))}" if len(runs) > 1 else ""


def cell(summary: dict[str, Any], field: str) -> str:
    return "ERROR" if summary.get(field) is None and "error" in summary else fmt(summary.get(field))


def table(summaries: dict[str, dict[str, dict[str, Any]]], compare: bool) -> str:
    """Markdown table, one row per headline metric; CPU columns are cores."""
    if compare:
        lines = [
            "| scenario | A | B | A/B | A range | B range | other CPU A/B |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines = [
            "| scenario | result | range | generator CPU | broker CPU | other CPU |",
            "|---|---:|---:|---:|---:|---:|",
        ]
    for scenario, sides in summaries.items():
        a_sum = sides["A"]
        for field, label, higher in sc.metrics_for(scenario):
            name = f"{scenario} ({label}{'' if higher else ', lower is better'})"
            if not compare:
                lines.append(
                    f"| {name} | {cell(a_sum, field)} | {spread(a_sum, field)} | "
                    + " | ".join(fmt(a_sum.get(f)) for f in CPU_FIELDS)
                    + " |"
                )
                continue
            b_sum = sides["B"]
            a, b = a_sum.get(field), b_sum.get(field)
            ratio = (
                f"{a / b:.2f}"
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
                else "—"
            )
            other = f"{fmt(a_sum.get('other_cpu_share'))}/{fmt(b_sum.get('other_cpu_share'))}"
            lines.append(
                f"| {name} | {cell(a_sum, field)} | {cell(b_sum, field)} | {ratio} | "
                f"{spread(a_sum, field)} | {spread(b_sum, field)} | {other} |"
            )
    return "\n".join(lines)


def sanity_line(summaries: dict[str, dict[str, dict[str, Any]]]) -> str | None:
    """The lean generator must clearly beat a plain aio-pika loop on the same broker."""
    try:
        lean = summaries["publish"]["A"]["msgs_per_s"]
        ref = summaries["aiopika_publish"]["A"]["msgs_per_s"]
    except KeyError:
        return None
    return (
        f"sanity: lean generator publish {lean:,.0f} msgs/s vs aio-pika loop "
        f"{ref:,.0f} msgs/s on A ({lean / ref:.1f}x)"
    )


# ----------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True, help="broker A, e.g. amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--compare", metavar="URL2", help="broker B: run A and B alternately")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="runs per scenario and broker (default 3 with --compare, else 1)",
    )
    p.add_argument(
        "--scenario",
        nargs="+",
        choices=list(sc.SCENARIOS),
        metavar="NAME",
        help=f"subset to run: {', '.join(sc.SCENARIOS)} (default: {' '.join(sc.CORE)})",
    )
    p.add_argument("--all", action="store_true", help="run every scenario")
    p.add_argument("--broker-pid", type=int, help="PID of broker A (default: owner of its port)")
    p.add_argument("--compare-pid", type=int, help="PID of broker B (default: owner of its port)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per timed run (3)")
    p.add_argument(
        "--publishers",
        type=int,
        default=1,
        help="publisher processes for publish/e2e/topic/fill (1)",
    )
    p.add_argument("--prefill", type=int, default=200_000, help="messages for consume (200k)")
    p.add_argument("--backlog", type=int, default=1_000_000, help="messages for backlog (1M)")
    p.add_argument("--connections", type=int, default=1000, help="for idle_connections (1000)")
    p.add_argument("--cap", type=float, default=60.0, help="hard cap per scenario run, s (60)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    p.add_argument("--out", type=Path, help="markdown report (default interop/results/DATE.md)")
    return p.parse_args(argv)


def write_report(
    out: Path, argv: list[str], started: dt.datetime, text: str, lines: list[str]
) -> None:
    """Append this run (table + every JSON line) to the markdown report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = started.isoformat(timespec="seconds")
    masked = [loadgen.AmqpUrl.parse(a).masked() if a.startswith("amqp://") else a for a in argv]
    host = f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    with out.open("a") as f:
        f.write(f"## Run started {stamp}\n\n`bench.py {shlex.join(masked)}` on {host}\n\n")
        f.write(text + "\n\n```json\n" + "\n".join(lines) + "\n```\n\n")


def selected_scenarios(args: argparse.Namespace) -> list[str]:
    """Requested scenarios in run order.

    The two memory scenarios go first: idle_connections before the broker has
    held any message, backlog next.  A broker that keeps memory it freed (a
    Python heap does) would otherwise serve them from what the throughput
    runs left behind, and show little or no RSS growth.
    """
    chosen = set(sc.SCENARIOS) if args.all else set(args.scenario or sc.CORE)
    first = ["idle_connections", "backlog"]
    order = [*first, *(s for s in sc.SCENARIOS if s not in first)]
    return [s for s in order if s in chosen]


Broker = tuple[loadgen.AmqpUrl, int | None]


def resolve_brokers(args: argparse.Namespace) -> dict[str, Broker]:
    """URL and PID per side; refuses anything that is not loopback."""
    given = {"A": (args.url, args.broker_pid)}
    if args.compare:
        given["B"] = (args.compare, args.compare_pid)
    brokers: dict[str, Broker] = {}
    for side, (raw, pid) in given.items():
        url = loadgen.AmqpUrl.parse(raw)
        url.check_loopback()
        brokers[side] = (url, pid or sc.listening_pid(url.port))
        if brokers[side][1] is None:
            print(f"note: no PID for {url.masked()}: no RSS or broker CPU figures", file=sys.stderr)
    return brokers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = dt.datetime.now()
    rounds = args.rounds or (3 if args.compare else 1)
    opts = sc.Options(
        duration=args.duration,
        publishers=args.publishers,
        prefill=args.prefill,
        backlog=args.backlog,
        connections=args.connections,
        cap=args.cap,
    )
    try:
        brokers = resolve_brokers(args)
    except (ValueError, OSError) as exc:  # bad URL, not loopback, unresolvable host
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warmed = set() if not args.no_warmup else set(brokers)

    all_lines: list[str] = []
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in selected_scenarios(args):
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in brokers}
        for round_no in range(1, rounds + 1):
            for side, (url, pid) in brokers.items():  # A, B, A, B, ...
                if side not in warmed and scenario != "idle_connections":
                    warm_up(url, pid, opts)
                    warmed.add(side)
                record = run_once(scenario, url, pid, opts, round_no, side)
                line = json.dumps(record)
                print(f"run: {line}", file=sys.stderr, flush=True)
                all_lines.append(line)
                runs[side].append(record)
                wait_broker_idle(pid)
        summaries[scenario] = {s: median_record(r, scenario) for s, r in runs.items()}
        print(json.dumps(scenario_line(scenario, summaries[scenario])), flush=True)

    text = table(summaries, compare=bool(args.compare))
    sanity = sanity_line(summaries)
    if sanity:
        text += f"\n\n{sanity}"
    print("\n" + text)
    summary_lines = [json.dumps(scenario_line(s, v)) for s, v in summaries.items()]
    out = args.out or RESULTS_DIR / f"{dt.date.today().isoformat()}.md"
    write_report(out, argv, started, text, summary_lines + all_lines)
    print(f"\nreport appended to {out}", file=sys.stderr)
    failed = any("error" in side for v in summaries.values() for side in v.values())
    return 1 if failed else 0


def scenario_line(scenario: str, sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One JSON object per scenario: A's summary, plus B and A/B with --compare."""
    line = {"scenario": scenario, **{k: v for k, v in sides["A"].items() if k != "scenario"}}
    line.pop("side", None)
    if "B" in sides:
        b = {k: v for k, v in sides["B"].items() if k not in ("scenario", "side")}
        line["compare"] = b
        line["a_over_b"] = {
            field: round(line[field] / b[field], 3)
            for field, _label, _higher in sc.metrics_for(scenario)
            if isinstance(line.get(field), (int, float)) and b.get(field)
        }
    return line


if __name__ == "__main__":
    sys.exit(main())
