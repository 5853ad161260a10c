"""Whole-broker behaviour across restarts and under memory pressure, with pika."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from .broker_process import REPO_ROOT, BrokerProcess


def connect(broker: BrokerProcess, **kwargs: object) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port, **kwargs))


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def test_delivery_counts_and_redelivered_survive_a_restart(data_dir: Path) -> None:
    broker = BrokerProcess(data_dir)
    try:
        connection = connect(broker)
        channel = connection.channel()
        channel.queue_declare("jobs", durable=True, arguments={"x-delivery-limit": 5})
        channel.confirm_delivery()
        channel.basic_publish("", "jobs", b"job", pika.BasicProperties(delivery_mode=2))
        for _ in range(2):
            method, _, _ = channel.basic_get("jobs")
            channel.basic_nack(method.delivery_tag, requeue=True)
        method, properties, _ = channel.basic_get("jobs")  # delivered, not acked
        assert properties.headers["x-delivery-count"] == 2
        connection.close()  # returned a third time
    finally:
        assert broker.stop() == 0
    restarted = BrokerProcess(data_dir)
    try:
        channel = connect(restarted).channel()
        method, properties, body = channel.basic_get("jobs", auto_ack=True)
        assert body == b"job"
        assert method.redelivered
        assert properties.headers["x-delivery-count"] == 3
    finally:
        restarted.stop()


def test_corrupt_store_stops_start_up_naming_the_file(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    store = data_dir / "amqpd.sqlite3"
    store.write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "amqpd", "--port", "0", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert str(store) in result.stderr
    assert store.read_bytes() == b"this is not a database" * 100  # never emptied


def test_memory_alarm_blocks_publishers_and_unblocks_them(data_dir: Path) -> None:
    broker = BrokerProcess(data_dir, "--set", "limits.memory_high_watermark=2MiB")
    try:
        publisher = connect(broker)
        events: list[str] = []
        publisher.add_on_connection_blocked_callback(lambda *args: events.append("blocked"))
        publisher.add_on_connection_unblocked_callback(lambda *args: events.append("unblocked"))
        channel = publisher.channel()
        channel.queue_declare("big")
        body = b"x" * 100_000
        for _ in range(40):  # 4 MB: well past the 2 MiB watermark
            channel.basic_publish("", "big", body)
        deadline = time.monotonic() + 10
        while "blocked" not in events and time.monotonic() < deadline:
            publisher.process_data_events(0.1)
        assert events == ["blocked"]

        def drain() -> None:
            consumer = connect(broker)
            consumer.channel().queue_purge("big")
            consumer.close()

        thread = threading.Thread(target=drain)
        thread.start()
        thread.join(10)
        deadline = time.monotonic() + 10
        while "unblocked" not in events and time.monotonic() < deadline:
            publisher.process_data_events(0.1)
        assert events == ["blocked", "unblocked"]
        publisher.close()
    finally:
        broker.stop()


def test_broker_wide_queue_defaults_apply_unless_overridden(data_dir: Path) -> None:
    broker = BrokerProcess(data_dir, "--set", "queue_defaults.max_length=2")
    try:
        channel = connect(broker).channel()
        channel.queue_declare("defaulted")
        channel.queue_declare("own", arguments={"x-max-length": 5})
        channel.confirm_delivery()
        for number in range(6):
            channel.basic_publish("", "defaulted", str(number).encode())
            channel.basic_publish("", "own", str(number).encode())
        assert channel.queue_declare("defaulted", passive=True).method.message_count == 2
        assert channel.queue_declare("own", passive=True).method.message_count == 5
    finally:
        broker.stop()


def test_a_large_persistent_backlog_comes_back_in_order_a_window_at_a_time(
    data_dir: Path,
) -> None:
    count = 5000  # more than one read-back window
    broker = BrokerProcess(data_dir)
    try:
        channel = connect(broker).channel()
        channel.queue_declare("backlog", durable=True)
        channel.confirm_delivery()
        for number in range(count):
            channel.basic_publish("", "backlog", str(number).encode(),
                                  pika.BasicProperties(delivery_mode=2))
    finally:
        assert broker.stop() == 0
    restarted = BrokerProcess(data_dir)
    try:
        connection = connect(restarted)
        channel = connection.channel()
        assert channel.queue_declare("backlog", durable=True).method.message_count == count
        channel.basic_publish("", "backlog", b"after", pika.BasicProperties(delivery_mode=2))
        bodies: list[bytes] = []
        channel.basic_consume("backlog", lambda ch, m, p, body: bodies.append(body),
                              auto_ack=True)
        deadline = time.monotonic() + 20
        while len(bodies) < count + 1 and time.monotonic() < deadline:
            connection.process_data_events(0.1)
        assert bodies == [str(n).encode() for n in range(count)] + [b"after"]
    finally:
        restarted.stop()


def test_paging_with_a_real_client_keeps_order(data_dir: Path) -> None:
    # A 4 MiB watermark pages from 2 MiB: 6,000 messages do not fit in memory.
    broker = BrokerProcess(data_dir, "--set", "limits.memory_high_watermark=4MiB")
    try:
        connection = connect(broker)
        channel = connection.channel()
        channel.queue_declare("long")
        channel.confirm_delivery()
        count = 6000
        for number in range(count):
            channel.basic_publish("", "long", str(number).encode().ljust(256, b"."))
        assert channel.queue_declare("long", passive=True).method.message_count == count
        assert (data_dir / "paging.sqlite3").exists()
        bodies: list[bytes] = []
        channel.basic_qos(prefetch_count=200)

        def on_message(ch: object, method: object, properties: object, body: bytes) -> None:
            bodies.append(body.rstrip(b"."))
            channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

        channel.basic_consume("long", on_message)
        deadline = time.monotonic() + 30
        while len(bodies) < count and time.monotonic() < deadline:
            connection.process_data_events(0.1)
        assert bodies == [str(n).encode() for n in range(count)]
    finally:
        broker.stop()
