"""The whole server as a process: listening line, graceful shutdown, no leaked sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pika.exceptions import ConnectionClosedByBroker

from .broker_process import REPO_ROOT, BrokerProcess


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path)
    yield process
    process.stop()


def connect(broker: BrokerProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))


def test_sigterm_closes_connections_with_320_and_exits_0(broker: BrokerProcess) -> None:
    connection = connect(broker)
    channel = connection.channel()
    channel.queue_declare("q")
    errors: list[BaseException] = []

    def wait_for_close() -> None:
        try:
            connection.process_data_events(time_limit=8)
        except BaseException as exc:  # inspected below
            errors.append(exc)

    # pika's BlockingConnection must be driven from the thread that owns it, so signal first
    # and then let process_data_events see the close.
    broker.process.terminate()
    thread = threading.Thread(target=wait_for_close)
    thread.start()
    thread.join(10)
    assert broker.process.wait(10) == 0
    assert errors and isinstance(errors[0], ConnectionClosedByBroker)
    assert errors[0].reply_code == 320


def test_dropped_connections_leak_no_sockets(broker: BrokerProcess) -> None:
    # Warm up so lazily opened files (the event loop's, logging's) are counted in the baseline.
    connect(broker).close()
    baseline = broker.open_fds()
    for index in range(300):
        sock = socket.create_connection((broker.host, broker.port))
        if index % 3 == 0:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
        elif index % 3 == 1:
            sock.sendall(b"AMQP\x00\x00\x09\x01\x01\x00\x00")  # dies mid-frame
        sock.close()
    assert broker.wait_for(lambda: broker.open_fds() <= baseline, timeout=10), (
        f"{broker.open_fds()} open fds, baseline {baseline}"
    )
    connection = connect(broker)
    channel = connection.channel()
    channel.queue_declare("still-serving")
    connection.close()


def test_port_zero_prints_the_real_port(broker: BrokerProcess) -> None:
    assert broker.port > 0
    with socket.create_connection((broker.host, broker.port)) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        assert sock.recv(7)[0] == 1  # a method frame: connection.start


def test_export_topology_of_a_running_broker(broker: BrokerProcess, tmp_path: Path) -> None:
    connection = connect(broker)
    channel = connection.channel()
    channel.exchange_declare("live-orders", "topic", durable=True)
    channel.queue_declare("live-emails", durable=True)
    channel.queue_bind("live-emails", "live-orders", "order.*")
    connection.close()
    deadline = time.monotonic() + 5
    output = ""
    while time.monotonic() < deadline and "live-emails" not in output:
        time.sleep(0.3)
        result = subprocess.run(
            [sys.executable, "-m", "amqpd", "--data-dir", str(tmp_path), "export-topology"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
        )
        output = result.stdout
    assert "live-orders" in output and "live-emails" in output and "order.*" in output
