"""What a Prometheus scrape costs on a broker with many queues (in-process, no HTTP).

    .venv/bin/python interop/bench_prometheus.py [--queues 10000] [--rounds 5]

Builds a broker with N queues (every tenth holding 10 messages), then times reading the
broker into metric families -- the part of a scrape done on the broker's event loop, during
which no AMQP traffic is served ("read") -- and rendering the text, which the broker does in
a worker thread ("render"). Prints the median and the worst round per endpoint.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pamqp import commands

from amqpd.admin.readmodel import LiveState
from amqpd.broker.broker import Broker
from amqpd.broker.message import Message, route_for
from amqpd.config.settings import Settings
from amqpd.metrics.app import Snapshot, render
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.families import AGGREGATED, DETAILED, PER_OBJECT, BrokerCollector, Scrape
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
    args = parser.parse_args()
    state = build(args.queues)
    commits = CommitStats()
    for endpoint, families in ((AGGREGATED, None), (PER_OBJECT, None),
                               (DETAILED, {"queue_coarse_metrics"})):
        reads, renders, size = [], [], 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            collector = BrokerCollector(Scrape(state, commits, 0), endpoint, families)
            snapshot = list(collector.collect())  # on the event loop in the broker
            read = time.perf_counter()
            size = len(render(Snapshot(snapshot)))  # in a worker thread in the broker
            reads.append(read - started)
            renders.append(time.perf_counter() - read)
        label = endpoint + (f" ({','.join(sorted(families))})" if families else "")
        print(f"{args.queues} queues, {label}: read {_ms(reads)}, "
              f"render {_ms(renders)}, {size / 1024:.0f} KiB")


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.0f} ms (worst {max(times) * 1000:.0f})"


if __name__ == "__main__":
    main()
