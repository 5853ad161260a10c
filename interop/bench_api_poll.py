"""What monitoring costs the AMQP hot path: bench.py's scenarios with and without a
management-API poller, and the broker time of listing many queues.

    # the poll: an amqpd (or any broker with the management API) already running
    .venv/bin/python interop/bench_api_poll.py poll --url amqp://guest:guest@127.0.0.1:5672/ \\
        --api http://guest:guest@127.0.0.1:15672/api/ [--queues 1000] [--rounds 6]
    # ... or start an amqpd for the run, from this tree or a compiled copy of it
    .venv/bin/python interop/bench_api_poll.py poll --start [--tree /tmp/compiled-tree]
    # the listing, in-process: handler + JSON of GET /api/queues over N queues
    .venv/bin/python interop/bench_api_poll.py listing [--queues 10000] [--rounds 7]

``poll`` declares ``--queues`` idle queues (every tenth holding 10 messages) so a poll has
something to read, then runs each scenario (default publish, consume, e2e) alternately
without and with the poller on the same broker -- A, A+poll, A+poll, A, A, A+poll ... (the
order flips every round so a slow drift of the machine hits both alike). The poller is a
separate process doing what a monitoring agent or Flower does: once a second GET
``/api/overview``, ``/api/queues?page=1&page_size=100`` and ``/api/connections`` over one
keep-alive connection. Reported per scenario: the median throughput of each side, the
throughput cost ``1 - with/without`` per round (median and min..max over the rounds), the
broker-CPU-per-message cost ``with/without - 1`` per round (which neighbours' load on a
shared machine barely moves, unlike throughput) and the poll latencies the poller saw.
Before the scenarios, the broker's CPU is read while idle without and with the poller: the
difference is what one poll costs it. A markdown table goes to stdout (and to --out).

``listing`` times what the broker's event loop does for one request -- the handler reading
the broker and encoding the JSON, not the HTTP framing -- for the paged
``GET /api/queues?page=1&page_size=100``, the unpaged ``GET /api/queues`` and
``GET /api/overview``; no AMQP traffic is served meanwhile, so this is the stall one poll
puts on the hot path.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import multiprocessing
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

try:
    from interop import bench, loadgen
    from interop import bench_scenarios as sc
except ImportError:  # run as a script: interop/ itself is on sys.path
    import bench  # type: ignore[no-redef]
    import bench_scenarios as sc  # type: ignore[no-redef]
    import loadgen  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
POLL_PATHS = ("overview", "queues?page=1&page_size=100", "connections")
POLL_INTERVAL = 1.0
IDLE_QUEUE_PREFIX = "bench.apipoll.idle."
START_TIMEOUT = 30.0


# -------------------------------------------------------------------------- poller


def poll_loop(api: str, interval: float, stop: Event, results: Any) -> None:
    """GET each of POLL_PATHS every ``interval`` s until ``stop``; put a summary on
    ``results`` (runs in its own process)."""
    parsed = urlparse(api)
    token = base64.b64encode(
        f"{parsed.username or 'guest'}:{parsed.password or 'guest'}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    base = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80,
                                            timeout=30)
    latencies: dict[str, list[float]] = {path: [] for path in POLL_PATHS}
    sizes: dict[str, int] = {}
    errors: list[str] = []
    cpu0 = os.times()
    started = next_poll = time.monotonic()
    while not stop.is_set():
        for path in POLL_PATHS:
            t0 = time.perf_counter()
            try:
                connection.request("GET", base + path, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{path}: {exc!r}")
                connection.close()
                continue
            latencies[path].append(time.perf_counter() - t0)
            sizes[path] = len(body)
            if response.status != 200:
                errors.append(f"{path}: HTTP {response.status}")
        next_poll += interval
        stop.wait(max(0.0, next_poll - time.monotonic()))
    connection.close()
    cpu1 = os.times()
    seconds = max(time.monotonic() - started, 1e-6)
    results.put({
        "polls": len(latencies[POLL_PATHS[0]]),
        "latency_ms": {path: _median_ms(values) for path, values in latencies.items()},
        "latency_max_ms": {path: round(max(values) * 1000, 1) if values else None
                           for path, values in latencies.items()},
        "response_bytes": sizes,
        "poller_cpu_share": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system)
                                  / seconds, 3),
        "errors": errors[:5],
    })


def _median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 1) if values else None


@contextmanager
def poller(api: str) -> Iterator[dict[str, Any]]:
    """A poller process for the duration of the block; its summary fills the dict."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    results = context.Queue()
    process = context.Process(target=poll_loop, args=(api, POLL_INTERVAL, stop, results),
                              daemon=True)
    summary: dict[str, Any] = {}
    process.start()
    try:
        yield summary
    finally:
        stop.set()
        try:
            summary.update(results.get(timeout=60))
        except queue.Empty:
            summary["errors"] = ["the poller reported nothing"]
        process.join(10)
        if process.is_alive():
            process.kill()


# --------------------------------------------------------------------- the broker


def start_amqpd(tree: Path, data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    """amqpd from ``tree`` (compiled or not) with the management API on free ports;
    returns the process, the AMQP URL and the management URL."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpd", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--log-level", "warning", "--management-port", "0",
         "--prometheus-port", "0"],
        cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    amqp = api = None
    deadline = time.monotonic() + START_TIMEOUT
    while (amqp is None or api is None) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        address = line.rsplit(" ", 1)[-1].strip()
        if line.startswith("amqpd listening on "):
            amqp = f"amqp://guest:guest@{address}/"
        elif line.startswith("amqpd management listening on "):
            api = f"http://guest:guest@{address}/api/"
    if amqp is None or api is None:
        process.kill()
        raise RuntimeError("amqpd did not announce its AMQP and management listeners")
    return process, amqp, api


def compiled_modules(tree: Path) -> int:
    """How many mypyc extension modules the tree has (0: pure Python)."""
    return sum(1 for _ in (tree / "amqpd").rglob("*.so"))


def declare_idle_queues(url: loadgen.AmqpUrl, count: int) -> list[str]:
    """``count`` idle queues, every tenth holding 10 messages (what a poll reads)."""
    connection = loadgen.Connection(url, timeout=30)
    names = [f"{IDLE_QUEUE_PREFIX}{index:05d}" for index in range(count)]
    frames = b""
    for index, name in enumerate(names):
        connection.queue_declare(name)
        if index % 10 == 0:
            frames += loadgen.encode_publish("", name, b"x" * 100) * 10
    connection.sock.sendall(frames)
    if names:
        connection.message_count(names[-1])  # a round trip: the publishes are in
    connection.close()
    return names


def delete_queues(url: loadgen.AmqpUrl, names: list[str]) -> None:
    connection = loadgen.Connection(url, timeout=30)
    for name in names:
        connection.queue_delete(name)
    connection.close()


# -------------------------------------------------------------------------- the poll


SIDES = ("without", "with_poll")


def run_side(side: str, scenario: str, url: loadgen.AmqpUrl, pid: int | None, api: str,
             opts: sc.Options, round_no: int) -> dict[str, Any]:
    """One run of bench.py's scenario, with the poller running throughout on one side."""
    record: dict[str, Any]
    if side == "without":
        record = bench.run_once(scenario, url, pid, opts, round_no, side)
        return record
    with poller(api) as poll:
        record = bench.run_once(scenario, url, pid, opts, round_no, side)
    record["poll"] = poll
    return record


def pair_costs(runs: dict[str, list[dict[str, Any]]], field: str) -> list[float]:
    """Cost in % of each round: 1 - with/without, from the two runs of that round."""
    costs = []
    for without, with_poll in zip(runs["without"], runs["with_poll"], strict=True):
        a, b = without.get(field), with_poll.get(field)
        if isinstance(a, int | float) and isinstance(b, int | float) and a:
            costs.append(round((1 - b / a) * 100, 2))
    return costs


def cpu_per_message(record: dict[str, Any]) -> float | None:
    """Broker CPU microseconds per message of a run: unlike throughput, this barely moves
    when neighbours take CPU away from the broker, so it shows the poll's own cost."""
    cores, rate = record.get("broker_cpu_share"), record.get("msgs_per_s")
    if not isinstance(cores, int | float) or not isinstance(rate, int | float) or not rate:
        return None
    return cores / rate * 1e6


def pair_cpu_costs(runs: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Extra broker CPU per message in % of each round: with/without - 1."""
    costs = []
    for without, with_poll in zip(runs["without"], runs["with_poll"], strict=True):
        a, b = cpu_per_message(without), cpu_per_message(with_poll)
        if a and b is not None:
            costs.append(round((b / a - 1) * 100, 2))
    return costs


def summarise(scenario: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    field = sc.metrics_for(scenario)[0][0]
    medians = {}
    for side in SIDES:
        values = [r[field] for r in runs[side] if isinstance(r.get(field), int | float)]
        medians[side] = round(statistics.median(values), 1) if values else None
    costs = pair_costs(runs, field)
    cpu_costs = pair_cpu_costs(runs)
    latencies: dict[str, list[float]] = {}
    for record in runs["with_poll"]:
        for path, value in record.get("poll", {}).get("latency_ms", {}).items():
            if value is not None:
                latencies.setdefault(path, []).append(value)
    broker_cpu = {side: _median([r.get("broker_cpu_share") for r in runs[side]])
                  for side in SIDES}
    return {
        "scenario": scenario,
        "metric": field,
        "without": medians["without"],
        "with_poll": medians["with_poll"],
        "cost_pct_median": round(statistics.median(costs), 2) if costs else None,
        "cost_pct_runs": costs,
        "broker_cpu_share": broker_cpu,
        "cpu_cost_pct_median": round(statistics.median(cpu_costs), 2) if cpu_costs else None,
        "cpu_cost_pct_runs": cpu_costs,
        "other_cpu_share": _median([r.get("other_cpu_share") for side in SIDES
                                    for r in runs[side]]),
        "poll_latency_ms": {path: round(statistics.median(v), 1)
                            for path, v in latencies.items()},
        "errors": [r["error"] for side in SIDES for r in runs[side] if "error" in r],
    }


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 3) if numbers else None


def _percent(median: float | None, runs: list[float]) -> tuple[str, str]:
    """(median, min..max) of per-round costs, as table cells."""
    if median is None or not runs:
        return "—", "—"
    return f"{median:+.1f} %", f"{min(runs):+.1f}..{max(runs):+.1f} %"


def poll_table(summaries: list[dict[str, Any]]) -> str:
    lines = ["| scenario | without poll | with poll | throughput cost (median) | range | "
             "broker CPU/msg cost (median) | range | other CPU | poll latency ms "
             "(overview, queues page, connections) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        cost, spread = _percent(s["cost_pct_median"], s["cost_pct_runs"])
        cpu_cost, cpu_spread = _percent(s["cpu_cost_pct_median"], s["cpu_cost_pct_runs"])
        latency = ", ".join(bench.fmt(s["poll_latency_ms"].get(path)) for path in POLL_PATHS)
        lines.append(f"| {s['scenario']} ({s['metric']}) | {bench.fmt(s['without'])} | "
                     f"{bench.fmt(s['with_poll'])} | {cost} | {spread} | {cpu_cost} | "
                     f"{cpu_spread} | {bench.fmt(s['other_cpu_share'])} | {latency} |")
    return "\n".join(lines)


def idle_poll_cost(pid: int | None, api: str, seconds: float, rounds: int = 2) -> str:
    """Broker CPU of an idle broker without and with the poller (alternating), in ms per
    second: the difference is what one poll of the three endpoints costs the broker."""
    if pid is None:
        return "idle poll cost: no broker PID"
    used: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(rounds):
        for side in SIDES:
            before = sc.proc_cpu_seconds(pid) or 0.0
            if side == "with_poll":
                with poller(api):
                    time.sleep(seconds)
            else:
                time.sleep(seconds)
            used[side].append(((sc.proc_cpu_seconds(pid) or 0.0) - before) / seconds * 1000)
    without, with_poll = (statistics.median(used[side]) for side in SIDES)
    return (f"idle broker CPU: {without:.1f} ms/s without the poller, {with_poll:.1f} ms/s "
            f"with it: one poll ({len(POLL_PATHS)} GETs) costs "
            f"{with_poll - without:.1f} ms of broker CPU")


def run_poll(args: argparse.Namespace) -> int:
    process = None
    data_dir = None
    if args.start:
        tree = Path(args.tree).resolve() if args.tree else REPO
        data_dir = Path(tempfile.mkdtemp(prefix="bench-apipoll-"))
        process, raw_url, api = start_amqpd(tree, data_dir)
        print(f"amqpd from {tree} ({compiled_modules(tree)} compiled modules), "
              f"{raw_url}, management {api}", file=sys.stderr)
    else:
        if not args.url or not args.api:
            print("error: give --url and --api, or --start", file=sys.stderr)
            return 2
        raw_url, api = args.url, args.api
    try:
        url = loadgen.AmqpUrl.parse(raw_url)
        url.check_loopback()
        pid = process.pid if process is not None else sc.listening_pid(url.port)
        opts = sc.Options(duration=args.duration, prefill=args.prefill, cap=args.cap)
        idle = declare_idle_queues(url, args.queues)
        started = dt.datetime.now()
        load = Path("/proc/loadavg").read_text().split()[:3]
        summaries, lines = [], []
        try:
            idle_line = idle_poll_cost(pid, api, args.idle_seconds)
            print(idle_line, file=sys.stderr, flush=True)
            bench.warm_up(url, pid, opts)
            for scenario in args.scenario:
                runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
                for round_no in range(1, args.rounds + 1):
                    order = SIDES if round_no % 2 else tuple(reversed(SIDES))
                    for side in order:
                        record = run_side(side, scenario, url, pid, api, opts, round_no)
                        line = json.dumps(record)
                        print(f"run: {line}", file=sys.stderr, flush=True)
                        lines.append(line)
                        runs[side].append(record)
                        bench.wait_broker_idle(pid)
                summary = summarise(scenario, runs)
                summaries.append(summary)
                print(json.dumps(summary), flush=True)
        finally:
            delete_queues(url, idle)
        text = (f"{args.queues} idle queues, {args.rounds} rounds per side, "
                f"load average at start {' '.join(load)}, "
                f"at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n"
                f"{idle_line}\n\n" + poll_table(summaries))
        print("\n" + text)
        if args.out:
            bench.write_report(args.out, sys.argv[1:], started, text,
                               [json.dumps(s) for s in summaries] + lines)
        return 1 if any(s["errors"] for s in summaries) else 0
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


# ----------------------------------------------------------------------- the listing


def run_listing(args: argparse.Namespace) -> int:
    """Handler + JSON time of the listing endpoints over ``--queues`` queues, in-process."""
    # Imported here: the poll half must run against any broker without amqpd installed.
    from pamqp import commands

    from amqpd.admin import api_node, api_topology
    from amqpd.admin.context import Call
    from amqpd.admin.rates import Rates
    from amqpd.admin.readmodel import LiveState, to_json
    from amqpd.broker.broker import Broker
    from amqpd.broker.message import Message, route_for
    from amqpd.config.settings import Settings
    from amqpd.protocol import codec

    broker = Broker(Settings(disk_free_limit=0))
    vhost = broker.vhosts["/"]
    header = codec.encode_header_payload(100, commands.Basic.Properties())
    for index in range(args.queues):
        declared = vhost.declare_queue(f"queue-{index:05d}", None)
        if index % 10 == 0:
            for _ in range(10):
                declared.push(Message(route_for("", declared.name), header, b"x" * 100))
    rates = Rates(broker)
    state = LiveState(broker, list, rates=rates)
    rates.sample()
    user = broker.users.get(broker.settings.default_user)
    assert user is not None
    endpoints = {
        "GET /api/queues?page=1&page_size=100":
            (api_topology.list_queues, {"page": "1", "page_size": "100"}),
        "GET /api/queues?page=1&page_size=100&sort=messages":
            (api_topology.list_queues, {"page": "1", "page_size": "100", "sort": "messages"}),
        "GET /api/queues": (api_topology.list_queues, {}),
        "GET /api/overview": (api_node.overview, {}),
    }
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.queues} queues, {args.rounds} rounds, load average {load}")
    for label, (handler, query) in endpoints.items():
        times, size = [], 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            reply = handler(Call(state, user, "GET", {}, dict(query)))
            size = len(to_json(reply.body))
            times.append(time.perf_counter() - started)
        print(f"{label}: {_spread_ms(times)}, {size / 1024:.0f} KiB")
    # The rate sampler's tick runs on the same loop every 5 s, polled or not.
    ticks = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        rates.sample({})
        ticks.append(time.perf_counter() - started)
    print(f"rate sampler tick (every 5 s): {_spread_ms(ticks)}")
    return 0


def _spread_ms(times: list[float]) -> str:
    return (f"{statistics.median(times) * 1000:.1f} ms "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    poll = commands.add_parser("poll", help="scenarios with and without an API poller")
    poll.add_argument("--url", help="AMQP URL of a running broker")
    poll.add_argument("--api", help="its management URL, e.g. http://guest:guest@127.0.0.1:15672/api/")
    poll.add_argument("--start", action="store_true", help="start an amqpd for the run")
    poll.add_argument("--tree", help="with --start: the source tree to run (default: this one)")
    poll.add_argument("--queues", type=int, default=1000, help="idle queues to declare (1000)")
    poll.add_argument("--rounds", type=int, default=6, help="runs per side and scenario (6)")
    poll.add_argument("--scenario", nargs="+", default=["publish", "consume", "e2e"],
                      choices=list(sc.SCENARIOS), metavar="NAME")
    poll.add_argument("--duration", type=float, default=3.0, help="seconds per timed run (3)")
    poll.add_argument("--prefill", type=int, default=200_000, help="messages for consume")
    poll.add_argument("--cap", type=float, default=60.0, help="hard cap per run, s (60)")
    poll.add_argument("--out", type=Path, help="append the table and JSON lines here")
    poll.add_argument("--idle-seconds", type=float, default=10.0,
                      help="each idle CPU sample without / with the poller, s (10)")
    listing = commands.add_parser("listing", help="broker time of the listing endpoints")
    listing.add_argument("--queues", type=int, default=10_000)
    listing.add_argument("--rounds", type=int, default=7)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_poll(args) if args.command == "poll" else run_listing(args)


if __name__ == "__main__":
    sys.exit(main())
