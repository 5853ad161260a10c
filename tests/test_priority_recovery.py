"""Priority queues across a restart and with their tails paged to disk, with pika against a
real amqpd process (its data dir and memory watermark are under the test's control)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pika

from .broker_process import BrokerProcess


def connect(broker: BrokerProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))


def expected(priorities: list[int], max_priority: int) -> list[bytes]:
    order = sorted(range(len(priorities)),
                   key=lambda n: (-min(priorities[n], max_priority), n))
    return [str(n).encode() for n in order]


def consume_all(connection: pika.BlockingConnection, queue: str, count: int) -> list[bytes]:
    channel = connection.channel()
    channel.basic_qos(prefetch_count=100)
    bodies: list[bytes] = []

    def on_message(ch: object, method: object, properties: object, body: bytes) -> None:
        bodies.append(body.rstrip(b"."))
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    channel.basic_consume(queue, on_message)
    deadline = time.monotonic() + 40
    while len(bodies) < count and time.monotonic() < deadline:
        connection.process_data_events(0.1)
    connection.process_data_events(0.2)
    return bodies


def test_restart_brings_a_priority_backlog_back_in_priority_order(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(7)
    count = 4500  # more than two of the store's read windows
    priorities = [rng.randrange(0, 12) for _ in range(count)]
    broker = BrokerProcess(data_dir)
    try:
        connection = connect(broker)
        channel = connection.channel()
        channel.queue_declare("prio", durable=True, arguments={"x-max-priority": 9})
        channel.confirm_delivery()
        for number, priority in enumerate(priorities):
            channel.basic_publish("", "prio", str(number).encode(),
                                  pika.BasicProperties(delivery_mode=2, priority=priority))
        # The first three in priority order are delivered and unacked when the broker stops.
        held = [channel.basic_get("prio")[2] for _ in range(3)]
        assert held == expected(priorities, 9)[:3]
    finally:
        assert broker.stop() == 0
    restarted = BrokerProcess(data_dir)
    try:
        connection = connect(restarted)
        channel = connection.channel()
        declare_ok = channel.queue_declare("prio", durable=True,
                                           arguments={"x-max-priority": 9})
        assert declare_ok.method.message_count == count
        method, _, body = channel.basic_get("prio", auto_ack=True)
        assert body == held[0] and method.redelivered
        channel.basic_publish("", "prio", b"late-top", pika.BasicProperties(priority=9))
        rest = consume_all(connection, "prio", count)
        assert rest[0] == held[1]  # 9s recovered before a new 9 published after restart
        assert rest == _with_late(expected(priorities, 9)[1:], b"late-top", priorities)
    finally:
        restarted.stop()


def _with_late(order: list[bytes], late: bytes, priorities: list[int]) -> list[bytes]:
    """``late`` (priority 9, newest) goes after every recovered message of priority >= 9."""
    top = sum(1 for body in order if min(priorities[int(body)], 9) == 9)
    return [*order[:top], late, *order[top:]]


def test_paged_priority_queue_keeps_priority_order(tmp_path: Path) -> None:
    # A 4 MiB watermark pages from 2 MiB: 6,000 bodies of 256 bytes do not fit in memory.
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir, "--set", "limits.memory_high_watermark=4MiB")
    rng = random.Random(11)
    count = 6000
    # Low priorities first, so the high ones arrive while paging and must overtake
    # everything already in memory.
    priorities = sorted(rng.randrange(0, 4) for _ in range(count // 2))
    priorities += [rng.randrange(0, 6) for _ in range(count // 2)]
    try:
        connection = connect(broker)
        channel = connection.channel()
        channel.queue_declare("long", arguments={"x-max-priority": 5})
        channel.confirm_delivery()
        for number, priority in enumerate(priorities):
            channel.basic_publish("", "long", str(number).encode().ljust(256, b"."),
                                  pika.BasicProperties(priority=priority))
        assert channel.queue_declare("long", passive=True).method.message_count == count
        assert (data_dir / "paging.sqlite3").exists()
        # Some taken and requeued while paged: they go back to their places.
        tags = [channel.basic_get("long")[0].delivery_tag for _ in range(50)]
        channel.basic_nack(tags[-1], multiple=True, requeue=True)
        assert consume_all(connection, "long", count) == expected(priorities, 5)
    finally:
        broker.stop()


def test_restart_with_a_small_watermark_pages_the_recovered_backlog(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    count = 5000
    rng = random.Random(3)
    priorities = [rng.randrange(0, 4) for _ in range(count)]
    broker = BrokerProcess(data_dir)
    try:
        channel = connect(broker).channel()
        channel.queue_declare("prio", durable=True, arguments={"x-max-priority": 3})
        channel.confirm_delivery()
        for number, priority in enumerate(priorities):
            channel.basic_publish("", "prio", str(number).encode().ljust(512, b"."),
                                  pika.BasicProperties(delivery_mode=2, priority=priority))
    finally:
        assert broker.stop() == 0
    restarted = BrokerProcess(data_dir, "--set", "limits.memory_high_watermark=2MiB")
    try:
        connection = connect(restarted)
        assert (data_dir / "paging.sqlite3").exists()
        assert consume_all(connection, "prio", count) == expected(priorities, 3)
    finally:
        restarted.stop()
