"""What a Prometheus scrape costs on a broker with many queues.

    .venv/bin/python interop/bench_prometheus.py [--queues 10000] [--rounds 5]
    .venv/bin/python interop/bench_prometheus.py --http [--queues 10000] [--rounds 5]
    .venv/bin/python interop/bench_prometheus.py --http --amqp-url URL --metrics-url URL

In-process (the default): builds a broker with N queues (every tenth holding 10 messages),
then times reading the broker into metric families -- the part of a scrape done on the
broker's event loop, during which no AMQP traffic is served ("read") -- and rendering the
text, which the broker does in a worker thread ("render").

``--http``: starts an amqpd (or uses the broker at ``--amqp-url``/``--metrics-url``, e.g. a
RabbitMQ from interop/rabbitmq.py), declares the same queues over AMQP and times whole HTTP
GETs of each endpoint, while a second connection does AMQP round trips (a passive
queue.declare) back to back: the longest round trip during the scrapes shows how long the
event loop was busy with them. Prints the median and the worst round per endpoint.
"""

from __future__ import annotations

import argparse
import os
import queue as queues
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
from pamqp import commands

from amqpd.admin.readmodel import LiveState
from amqpd.broker.broker import Broker
from amqpd.broker.message import Message, route_for
from amqpd.config.settings import Settings
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.exposition import render_families
from amqpd.metrics.families import (
    AGGREGATED,
    DETAILED,
    DETAILED_FAMILIES,
    PER_OBJECT,
    BrokerCollector,
    Scrape,
)
from amqpd.protocol import codec


def build(queues: int) -> LiveState:
    broker = Broker(Settings(disk_free_limit=0))
    vhost = broker.vhosts["/"]
    header = codec.encode_header_payload(100, commands.Basic.Properties())
    for index in range(queues):
        queue = vhost.declare_queue(f"queue-{index:05d}", None)
        if index % 10 == 0:
            for _ in range(10):
                queue.push(Message(route_for("", queue.name), header, b"x" * 100))
    return LiveState(broker, list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--http", action="store_true",
                        help="scrape a broker process over HTTP instead")
    parser.add_argument("--amqp-url", help="with --http: this broker instead of a new amqpd")
    parser.add_argument("--metrics-url", help="with --amqp-url: its http://HOST:PORT/metrics")
    args = parser.parse_args()
    if args.http:
        if args.amqp_url:
            http_bench(args.amqp_url, args.metrics_url.rstrip("/"), args.queues, args.rounds)
        else:
            with amqpd_process() as (amqp_url, metrics_url):
                http_bench(amqp_url, metrics_url, args.queues, args.rounds)
        return
    state = build(args.queues)
    commits = CommitStats()
    for endpoint, families in ((AGGREGATED, None), (PER_OBJECT, None),
                               (DETAILED, {"queue_coarse_metrics"}),
                               (DETAILED, DETAILED_FAMILIES)):
        reads, renders, totals, size = [], [], [], 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            collector = BrokerCollector(Scrape(state, commits, 0), endpoint, families)
            snapshot = list(collector.collect())  # on the event loop in the broker
            read = time.perf_counter()
            size = len(render_families(snapshot))  # in a worker thread in the broker
            reads.append(read - started)
            renders.append(time.perf_counter() - read)
            totals.append(time.perf_counter() - started)
        label = endpoint + (
            "" if not families else " (all families)" if families == DETAILED_FAMILIES
            else f" ({','.join(sorted(families))})")
        print(f"{args.queues} queues, {label}: read {_ms(reads)}, "
              f"render {_ms(renders)}, total {_ms(totals)}, {size / 1024:.0f} KiB")


@contextmanager
def amqpd_process() -> Iterator[tuple[str, str]]:
    """A fresh amqpd from this tree (PYTHONPATH decides which build): (AMQP URL, metrics URL)."""
    with tempfile.TemporaryDirectory(prefix="bench-prometheus-") as data_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "amqpd", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", data_dir, "--log-level", "warning", "--management-port", "0",
             "--prometheus-port", "0"],
            cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"), text=True)
        try:
            amqp = metrics = ""
            for line in process.stdout or ():
                if line.startswith("amqpd listening on "):
                    amqp = line.rsplit(" ", 1)[1].strip()
                elif line.startswith("amqpd prometheus listening on "):
                    metrics = line.rsplit(" ", 1)[1].strip()
                if amqp and metrics:
                    break
            else:
                raise RuntimeError("amqpd did not start")
            yield f"amqp://guest:guest@{amqp}/%2F", f"http://{metrics}/metrics"
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def declare(amqp_url: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for index in range(count):
        name = f"bench-prometheus-{index:05d}"
        channel.queue_declare(name)
        if index % 10 == 0:
            for _ in range(10):
                channel.basic_publish("", name, b"x" * 100)
    connection.close()


class RoundTrips(threading.Thread):
    """AMQP round trips back to back on their own connection: (started, seconds) each."""

    def __init__(self, amqp_url: str):
        super().__init__(daemon=True)
        self.amqp_url = amqp_url
        self.trips: queues.SimpleQueue[tuple[float, float]] = queues.SimpleQueue()
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        channel = connection.channel()
        while not self.stopping.is_set():
            started = time.perf_counter()
            channel.queue_declare("bench-prometheus-00000", passive=True)
            self.trips.put((started, time.perf_counter() - started))
        connection.close()

    def longest_between(self, start: float, end: float) -> float:
        longest = 0.0
        while not self.trips.empty():
            started, seconds = self.trips.get()
            if started + seconds >= start and started <= end:
                longest = max(longest, seconds)
        return longest


def http_bench(amqp_url: str, metrics_url: str, count: int, rounds: int) -> None:
    declare(amqp_url, count)
    time.sleep(6)  # RabbitMQ's per-queue figures lag by its 5 s collection interval
    probe = RoundTrips(amqp_url)
    probe.start()
    all_families = "&".join(f"family={name}" for name in sorted(DETAILED_FAMILIES))
    try:
        for label, url in (("/metrics", metrics_url),
                           ("/metrics/per-object", metrics_url + "/per-object"),
                           ("/metrics/detailed (queue_coarse_metrics)",
                            metrics_url + "/detailed?family=queue_coarse_metrics"),
                           ("/metrics/detailed (all families)",
                            f"{metrics_url}/detailed?{all_families}")):
            times, stalls, size = [], [], 0
            for _ in range(rounds):
                time.sleep(0.2)
                probe.longest_between(0, time.perf_counter())  # forget earlier trips
                started = time.perf_counter()
                with urllib.request.urlopen(url, timeout=120) as response:
                    size = len(response.read())
                ended = time.perf_counter()
                times.append(ended - started)
                time.sleep(0.05)  # let the trip that spans the end come back
                stalls.append(probe.longest_between(started, ended))
            print(f"{count} queues, HTTP GET {label}: {_ms(times)}, longest AMQP round trip "
                  f"meanwhile {_ms(stalls)}, {size / 1024:.0f} KiB")
    finally:
        probe.stopping.set()
        probe.join(10)


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.0f} ms (worst {max(times) * 1000:.0f})"


if __name__ == "__main__":
    main()
