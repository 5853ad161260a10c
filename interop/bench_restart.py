"""Restart time with a large persistent backlog, amqpd and RabbitMQ side by side.

    .venv/bin/python interop/bench_restart.py --messages 1000000

For each broker: start it on a fresh data directory, fill a durable queue with N persistent
256-byte messages under publisher confirms (window 1,000; the fill rate is reported too),
stop it cleanly, start it again and time until it accepts AMQP connections *and* reports
all N messages in the queue. Prints one JSON line per broker and a ratio. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pamqp import commands

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rabbitmq
from loadgen import AmqpUrl, Connection, encode_publish

REPO = Path(__file__).resolve().parent.parent
QUEUE = "bench.restart"
WINDOW = 1000


def fill(url: str, count: int) -> float:
    """Publish ``count`` persistent messages with confirms; returns msgs/s."""
    conn = Connection(AmqpUrl.parse(url))
    conn.rpc(commands.Queue.Declare(queue=QUEUE, durable=True), commands.Queue.DeclareOk)
    conn.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    frames = encode_publish("", QUEUE, b"x" * 256, persistent=True)
    started = time.monotonic()
    sent = acked = 0
    while acked < count:
        batch = min(WINDOW - (sent - acked), count - sent)
        if batch > 0:
            conn.sock.sendall(frames * batch)
            sent += batch
        _, value = conn.read_frame()
        if isinstance(value, commands.Basic.Ack):
            acked = value.delivery_tag if value.multiple else acked + 1
    rate = count / (time.monotonic() - started)
    conn.close()
    return rate


def ready_with(url: str, count: int, deadline: float) -> None:
    """Wait until the broker accepts connections and holds ``count`` messages."""
    while time.monotonic() < deadline:
        try:
            conn = Connection(AmqpUrl.parse(url), timeout=5)
        except OSError:
            time.sleep(0.02)
            continue
        try:
            ok = conn.rpc(commands.Queue.Declare(queue=QUEUE, durable=True, passive=True),
                          commands.Queue.DeclareOk)
            if ok.message_count >= count:
                return
        finally:
            conn.close()
        time.sleep(0.05)
    raise TimeoutError("the broker did not come back with every message in time")


def start_amqpd(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpd", "--port", "0", "--data-dir", str(data_dir),
         "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    return process, f"amqp://guest:guest@127.0.0.1:{port}/"


def measure_amqpd(count: int) -> dict[str, object]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    try:
        process, url = start_amqpd(data_dir)
        rate = fill(url, count)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        started = time.monotonic()
        process, url = start_amqpd(data_dir)
        ready_with(url, count, started + 600)
        seconds = time.monotonic() - started
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        size = sum(f.stat().st_size for f in data_dir.iterdir())
        return {"broker": "amqpd", "messages": count, "fill_msgs_per_s": round(rate),
                "restart_seconds": round(seconds, 2), "store_bytes": size}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def measure_rabbitmq(count: int) -> dict[str, object]:
    instance = rabbitmq.start()
    try:
        rate = fill(instance.url, count)
        rabbitmq.stop(instance, keep_data=True)
        started = time.monotonic()
        rabbitmq.boot(instance)
        ready_with(instance.url, count, started + 600)
        seconds = time.monotonic() - started
        return {"broker": "rabbitmq", "messages": count, "fill_msgs_per_s": round(rate),
                "restart_seconds": round(seconds, 2)}
    finally:
        rabbitmq.stop(instance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--skip-rabbitmq", action="store_true")
    args = parser.parse_args()
    results = [measure_amqpd(args.messages)]
    if not args.skip_rabbitmq and os.geteuid() == 0:
        results.append(measure_rabbitmq(args.messages))
    for result in results:
        print(json.dumps(result), flush=True)
    if len(results) == 2:
        ratios = {key: round(float(results[0][key]) / float(results[1][key]), 2)  # type: ignore[arg-type]
                  for key in ("fill_msgs_per_s", "restart_seconds")}
        print(json.dumps({"amqpd_over_rabbitmq": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
