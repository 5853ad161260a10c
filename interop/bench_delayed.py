"""Millions of pending delayed messages: publish, memory, restart, release, responsiveness.

    .venv/bin/python interop/bench_delayed.py --messages 1000000
    .venv/bin/python interop/bench_delayed.py --url amqp://guest:guest@host:5672/ --messages 100000

Publishes N persistent messages (256-byte bodies) to a durable ``x-delayed-message``
exchange under publisher confirms (window 1,000), every one with an ``x-delay`` that makes it
due at the same wall-clock instant, so that they all come due at once. Then:

- broker RSS per pending message (growth of VmRSS from before the first publish);
- restart (when this script started the broker): SIGTERM, start again, the seconds until it
  accepts AMQP connections and until it releases delayed messages again (a probe published
  with ``x-delay: 1`` comes through: amqpd reads its held messages back while serving
  clients, and releases nothing before they are all back), the control client's round
  trips meanwhile (below), the management API's ``messages_delayed``, and the RSS;
- release: from the due instant, the seconds until the bound queue holds all N (polled with
  passive declares), as msgs/s;
- responsiveness: meanwhile a control client on its own connection does round trips
  (publish to a queue of its own, then basic.get it back) and reports their p50/p99/max.

Without ``--url`` it starts amqpd (``python -m amqpd`` from this tree: run the script from a
compiled copy for compiled figures) on a fresh data directory, and measures everything; with
``--url`` it measures what it can from the outside (no RSS, no restart). RabbitMQ's delayed
message plugin is not packaged in Debian, so only amqpd is measured here. Not a test:
prints one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pamqp import body as pbody
from pamqp import commands, frame, header

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import AmqpUrl, Connection

REPO = Path(__file__).resolve().parent.parent
EXCHANGE = "bench.delayed"
QUEUE = "bench.delayed.due"
CONTROL_QUEUE = "bench.delayed.control"
PROBE_QUEUE = "bench.delayed.probe"
WINDOW = 1000
STALL_TIMEOUT = 600.0


class Broker:
    """An amqpd process of this tree on a private data directory, with management API."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.management_port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpd", "--port", "0", "--data-dir", str(self.data_dir),
             "--log-level", "warning", "--management-port", str(self.management_port),
             "--prometheus-port", "0"],
            cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise RuntimeError(f"amqpd did not start: {line!r}")
        port = int(line.rsplit(":", 1)[1])
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def messages_delayed(self) -> int | None:
        """The exchange's ``messages_delayed`` from the management API (None: not up yet)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.management_port}/api/exchanges/%2F/{EXCHANGE}",
            headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})  # guest:guest
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(json.load(response).get("messages_delayed", 0))
        except OSError:
            return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def delayed_publish(delay_ms: int, body: bytes) -> bytes:
    """The frames of one persistent publish to the delayed exchange with ``x-delay``."""
    properties = commands.Basic.Properties(delivery_mode=2, headers={"x-delay": delay_ms})
    return (frame.marshal(commands.Basic.Publish(exchange=EXCHANGE, routing_key="k"), 1)
            + frame.marshal(header.ContentHeader(0, len(body), properties), 1)
            + frame.marshal(pbody.ContentBody(body), 1))


def declare(url: str) -> None:
    conn = Connection(AmqpUrl.parse(url))
    try:
        conn.rpc(commands.Exchange.Declare(
            exchange=EXCHANGE, exchange_type="x-delayed-message", durable=True,
            arguments={"x-delayed-type": "direct"}), commands.Exchange.DeclareOk)
        conn.queue_declare(QUEUE, durable=True)
        conn.rpc(commands.Queue.Bind(queue=QUEUE, exchange=EXCHANGE, routing_key="k"),
                 commands.Queue.BindOk)
    finally:
        conn.close()


def publish(url: str, count: int, due_at: float, body: bytes) -> float:
    """Publish ``count`` messages all due at ``due_at`` (epoch s) with confirms; msgs/s."""
    conn = Connection(AmqpUrl.parse(url))
    conn.confirm_select()
    started = time.monotonic()
    sent = acked = 0
    while acked < count:
        batch = min(WINDOW - (sent - acked), count - sent)
        if batch > 0:
            # One delay per batch: the instant is the same, the delay shrinks as time goes.
            delay_ms = max(1, int((due_at - time.time()) * 1000))
            conn.sock.sendall(delayed_publish(delay_ms, body) * batch)
            sent += batch
        _, value = conn.read_frame()
        if isinstance(value, commands.Basic.Ack):
            acked = value.delivery_tag if value.multiple else acked + 1
        elif isinstance(value, commands.Basic.Nack):
            raise RuntimeError("the broker nacked a delayed publish")
    rate = count / (time.monotonic() - started)
    conn.close()
    return rate


def wait_until_accepting(broker: Broker, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            Connection(AmqpUrl.parse(broker.url), timeout=5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("the broker did not accept connections in time")


def wait_for_probe(url: str, deadline: float) -> None:
    """Publish a message delayed by 1 ms and wait until it comes through: the broker
    releases delayed messages again."""
    conn = Connection(AmqpUrl.parse(url), timeout=STALL_TIMEOUT)
    try:
        conn.queue_declare(PROBE_QUEUE)
        conn.rpc(commands.Queue.Bind(queue=PROBE_QUEUE, exchange=EXCHANGE, routing_key="probe"),
                 commands.Queue.BindOk)
        properties = commands.Basic.Properties(headers={"x-delay": 1})
        conn.send(commands.Basic.Publish(exchange=EXCHANGE, routing_key="probe"),
                  header.ContentHeader(0, 5, properties), pbody.ContentBody(b"probe"))
        while time.monotonic() < deadline:
            answer = conn.rpc(commands.Basic.Get(queue=PROBE_QUEUE, no_ack=True),
                              commands.Basic.GetOk, commands.Basic.GetEmpty)
            if isinstance(answer, commands.Basic.GetOk):
                return
            time.sleep(0.05)
        raise TimeoutError("the probe was not released in time")
    finally:
        conn.close()


class ControlClient(threading.Thread):
    """Round trips on a connection of its own (publish, then basic.get it back)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        # A broker busy releasing may not answer for a long time: that is what is measured.
        self.conn = Connection(AmqpUrl.parse(url), timeout=STALL_TIMEOUT)
        self.conn.queue_declare(CONTROL_QUEUE)  # after the restart: it is not durable
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (started monotonic, round trip s)

    def run(self) -> None:
        publish_frames = (
            frame.marshal(commands.Basic.Publish(exchange="", routing_key=CONTROL_QUEUE), 1)
            + frame.marshal(header.ContentHeader(0, 4, commands.Basic.Properties()), 1)
            + frame.marshal(pbody.ContentBody(b"ping"), 1))
        get = frame.marshal(commands.Basic.Get(queue=CONTROL_QUEUE, no_ack=True), 1)
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.conn.sock.sendall(publish_frames + get)
            self.conn.wait_for(commands.Basic.GetOk, commands.Basic.GetEmpty)
            self.samples.append((started, time.monotonic() - started))
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(STALL_TIMEOUT)
        self.conn.close()

    def figures(self, since: float, until: float, prefix: str) -> dict[str, float]:
        trips = sorted(rtt for started, rtt in self.samples if since <= started <= until)
        if not trips:
            return {}
        return {f"{prefix}round_trips": len(trips),
                f"{prefix}rtt_p50_ms": round(statistics.median(trips) * 1000, 2),
                f"{prefix}rtt_p99_ms": round(trips[int(len(trips) * 0.99)] * 1000, 2),
                f"{prefix}rtt_max_ms": round(trips[-1] * 1000, 2)}


def release(url: str, count: int, due_at: float, deadline: float) -> dict[str, Any]:
    """Wait for the due instant, then time the queue filling up, with a control client."""
    control = ControlClient(url)
    poller = Connection(AmqpUrl.parse(url), timeout=STALL_TIMEOUT)
    held_before = poller.message_count(QUEUE)
    control.start()
    time.sleep(max(0.0, due_at - time.time()))
    due_mono = time.monotonic()
    while poller.message_count(QUEUE) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the delayed messages were not all released in time")
        time.sleep(0.05)
    done = time.monotonic()
    control.finish()
    poller.close()
    seconds = done - due_mono
    return {"released_before_due": held_before, "release_seconds": round(seconds, 2),
            "release_msgs_per_s": round(count / seconds),
            **control.figures(due_mono, done, "release_control_")}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    body = b"x" * args.body
    figures: dict[str, Any] = {"messages": args.messages, "body_bytes": args.body,
                               "loadavg_start": loadavg()}
    data_dir = Path(tempfile.mkdtemp(prefix="bench-delayed-", dir=args.tmp))
    broker = Broker(data_dir) if args.url is None else None
    try:
        if broker is not None:
            broker.start()
            url = broker.url
        else:
            url = args.url
        declare(url)
        rss_before = broker.rss_bytes() if broker else 0
        # Due once publishing (at >= --min-rate msgs/s) and a restart are surely over.
        due_in = args.due_in or (args.messages / args.min_rate + args.messages / 50_000 + 20)
        due_at = time.time() + due_in
        figures["due_in_s"] = round(due_in)
        figures["publish_msgs_per_s"] = round(publish(url, args.messages, due_at, body))
        if broker is not None:
            time.sleep(1)  # the last commit's paging of bodies
            rss_held = broker.rss_bytes()
            figures["rss_before_mib"] = round(rss_before / 2**20, 1)
            figures["rss_held_mib"] = round(rss_held / 2**20, 1)
            figures["rss_bytes_per_pending"] = round((rss_held - rss_before) / args.messages)
            broker.stop()
            started = time.monotonic()
            broker.start()
            wait_until_accepting(broker, started + 600)
            accepting = time.monotonic()
            figures["restart_accepting_s"] = round(accepting - started, 2)
            url = broker.url  # a new port
            control = ControlClient(url)
            control.start()
            wait_for_probe(url, started + 600)
            releasing = time.monotonic()
            control.finish()
            figures["restart_releasing_s"] = round(releasing - started, 2)
            figures.update(control.figures(accepting, releasing, "restart_control_"))
            figures["restart_messages_delayed"] = broker.messages_delayed()
            figures["rss_after_restart_mib"] = round(broker.rss_bytes() / 2**20, 1)
            if time.time() > due_at:
                figures["warning"] = "restart ended after the due instant: raise --due-in"
        figures.update(release(url, args.messages, due_at, time.monotonic() + 3600))
        if broker is not None:
            figures["rss_after_release_mib"] = round(broker.rss_bytes() / 2**20, 1)
        figures["loadavg_end"] = loadavg()
        return figures
    except (OSError, RuntimeError) as exc:  # TimeoutError included: report what was measured
        figures["error"] = repr(exc)
        figures["loadavg_end"] = loadavg()
        return figures
    finally:
        if broker is not None:
            broker.stop()
        else:
            conn = Connection(AmqpUrl.parse(args.url))
            conn.exchange_delete(EXCHANGE)
            conn.queue_delete(QUEUE)
            conn.queue_delete(CONTROL_QUEUE)
            conn.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--body", type=int, default=256, help="body bytes")
    parser.add_argument("--url", help="measure this broker (no RSS, no restart)")
    parser.add_argument("--due-in", type=float, default=0.0,
                        help="seconds from the first publish to the due instant "
                             "(default: from --min-rate and the count)")
    parser.add_argument("--min-rate", type=float, default=10_000,
                        help="publish rate (msgs/s) the default --due-in allows for")
    parser.add_argument("--tmp", help="parent directory of the data directory")
    args = parser.parse_args()
    print(json.dumps(measure(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
