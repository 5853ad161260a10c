"""Where a message's time goes inside amqpd: per-stage timestamps at an open-loop rate.

    .venv/bin/python interop/stage_trace.py --rate 5000 --every 10

Starts amqpd (this tree, or ``--tree DIR`` for a compiled copy; fresh data directory, free
port) with ``AMQPD_TRACE_STAGES`` set (amqpd/session/trace.py: one message in ``--every`` is
stamped at each stage), runs the open-loop latency scenario of ``interop/bench.py`` at
``--rate`` against it, stops it (the stamps are flushed at exit) and prints the median, p99
and mean of each stage in microseconds, from the read that completed a publish to the
hand-over of its delivery to the transport, plus the client-side latency of that run. A
measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("read", "parsed", "routed", "dispatched", "encoded", "written")
SCENARIOS = {1000.0: "latency_1k", 5000.0: "latency_5k", 20000.0: "latency_20k"}


def start_traced_amqpd(tree: Path, data_dir: Path, trace_file: Path,
                       every: int) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, AMQPD_TRACE_STAGES=str(trace_file), AMQPD_TRACE_EVERY=str(every),
               PYTHONPATH=str(tree))
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpd", "--port", "0", "--data-dir", str(data_dir),
         "--log-level", "warning"],
        cwd=tree, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    return process, f"amqp://guest:guest@127.0.0.1:{port}/"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(trace_file: Path, warmup: float) -> dict[str, dict[str, float]]:
    """Median, p99 and mean (µs) of each stage, from the file's lines, but for the messages
    read in the first ``warmup`` seconds (the consumer attaching, the first connections)."""
    rows = [[int(field) for field in line.split()] for line in trace_file.read_text().split("\n")
            if line.strip()]
    if not rows:
        raise SystemExit(f"no traced messages in {trace_file}")
    start = min(row[0] for row in rows)
    rows = [row for row in rows if row[0] >= start + warmup * 1e9]
    summary: dict[str, dict[str, float]] = {}
    for index in range(1, len(STAGES)):
        name = f"{STAGES[index - 1]} -> {STAGES[index]}"
        # Column 1.. are offsets from the read (ns); a stage is the difference of two.
        deltas = [(row[index] - (row[index - 1] if index > 1 else 0)) / 1000 for row in rows]
        summary[name] = {"p50_us": round(percentile(deltas, 0.5), 1),
                         "p99_us": round(percentile(deltas, 0.99), 1),
                         "mean_us": round(statistics.fmean(deltas), 1)}
    totals = [row[-1] / 1000 for row in rows]
    summary["read -> written (total)"] = {"p50_us": round(percentile(totals, 0.5), 1),
                                          "p99_us": round(percentile(totals, 0.99), 1),
                                          "mean_us": round(statistics.fmean(totals), 1)}
    summary["samples"] = {"count": len(rows)}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000.0, choices=sorted(SCENARIOS))
    parser.add_argument("--every", type=int, default=10, help="trace one message in N")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of traced messages left out at the start")
    parser.add_argument("--keep", type=Path, help="copy the raw stamps to this file")
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="the amqpd source tree to run (e.g. a mypyc-compiled copy)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stage-trace-") as tmp:
        trace_file = Path(tmp) / "stages.txt"
        process, url = start_traced_amqpd(args.tree.resolve(), Path(tmp) / "data", trace_file,
                                          args.every)
        try:
            bench = subprocess.run(
                [sys.executable, str(REPO / "interop" / "bench.py"), "--url", url,
                 "--broker-pid", str(process.pid), "--scenario", SCENARIOS[args.rate],
                 "--rounds", "1", "--out", str(Path(tmp) / "bench.md")],
                check=True, capture_output=True, text=True,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        latency = json.loads(bench.stdout.strip().splitlines()[0])
        if args.keep:
            shutil.copyfile(trace_file, args.keep)
        print(json.dumps({"stages": summarise(trace_file, args.warmup),
                          "client_latency_ms": {key: latency[key] for key in
                                                ("p50_ms", "p99_ms", "p999_ms")},
                          "rate": args.rate, "every": args.every}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
