"""A consumer that stops reading, with unlimited credit, while a publisher keeps publishing
to its queue: the broker's output for that connection stays bounded by the output
watermark (``limits.output_high_watermark``, 1 MiB), the rest of the messages wait in the
queue, and other clients keep their throughput.

``python -m tests.test_stalled_peer [MESSAGES]`` prints the README figure (a bigger run);
``python -m interop.reliability_rabbitmq stalled`` runs the same measurement on RabbitMQ.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Protocol

import pika
from pamqp import commands
from pamqp import frame as pframe

from .broker_process import BrokerProcess
from .fuzz.mutations import handshake, method

MESSAGE = 64 * 1024
WATERMARK = 1024 * 1024


class Target(Protocol):
    """The broker measured: amqpd's ``BrokerProcess`` or a RabbitMQ node (``pid``: its
    beam.smp, whose RSS is read)."""

    host: str
    port: int

    @property
    def pid(self) -> int: ...


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def send_queue_bytes(local_port: int, remote_port: int) -> int:
    """Bytes in the kernel's send queue of the IPv4 socket local_port -> remote_port."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == local_port and \
                    int(remote.split(":")[1], 16) == remote_port:
                return int(fields[4].split(":")[0], 16)
    return 0


def stalled_consumer(broker: Target, queue: str) -> socket.socket:
    """A raw client that consumes ``queue`` with no prefetch limit, then never reads again.
    Its receive buffer is kept small so the kernel holds little of what was sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((broker.host, broker.port))
    sock.settimeout(5)
    sock.sendall(b"".join([
        *handshake(heartbeat=0),  # no heartbeats: silence is not what this test is about
        method(1, commands.Channel.Open()),
        method(1, commands.Queue.Declare(queue=queue)),
        method(1, commands.Basic.Qos(prefetch_count=0)),  # unlimited credit
        method(1, commands.Basic.Consume(queue=queue, consumer_tag="stalled")),
    ]))
    received = b""
    while True:  # read up to consume-ok, and not a byte more
        received += sock.recv(1)
        if len(received) >= 7:
            size = struct.unpack_from(">I", received, 3)[0]
            if len(received) == size + 8:
                _, _, value = pframe.unmarshal(received)
                received = b""
                if isinstance(value, commands.Basic.ConsumeOk):
                    return sock


def unread_bytes(sock: socket.socket) -> int:
    buffer = bytearray(4)
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buffer)
    return int.from_bytes(buffer, sys.byteorder)


def round_trips_per_second(broker: Target, queue: str, count: int = 500) -> float:
    """Another client's publish -> consume rate on its own queue."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    channel = connection.channel()
    channel.queue_declare(queue)
    channel.basic_qos(prefetch_count=100)
    started = time.monotonic()
    for number in range(count):
        channel.basic_publish("", queue, str(number).encode())
    received = 0
    for _method, _properties, _body in channel.consume(queue, auto_ack=True,
                                                       inactivity_timeout=5):
        if _method is None:
            break
        received += 1
        if received == count:
            break
    elapsed = time.monotonic() - started
    channel.cancel()
    connection.close()
    assert received == count
    return count / elapsed


def measure(broker: Target, messages: int) -> dict[str, float]:
    """Stall a consumer, publish ``messages`` of 64 KiB to its queue, and measure."""
    baseline_rate = round_trips_per_second(broker, "other")
    stalled = stalled_consumer(broker, "stalled")
    rss_before = rss_bytes(broker.pid)
    publisher = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    channel = publisher.channel()
    channel.confirm_delivery()
    body = b"x" * MESSAGE
    for _ in range(messages):
        channel.basic_publish("", "stalled", body)
    time.sleep(1.0)  # whatever the broker can deliver, it has by now
    ready = channel.queue_declare("stalled", passive=True).method.message_count
    delivered = messages - ready
    # What left the queue for the stalled connection and is not in a kernel buffer (the
    # broker's send queue, the client's receive queue) is in the broker's output buffer.
    kernel = send_queue_bytes(broker.port, stalled.getsockname()[1]) + unread_bytes(stalled)
    buffered = delivered * (MESSAGE + 100) - kernel  # about 100 bytes of frames a message
    stalled_rate = round_trips_per_second(broker, "other")
    rss_after = rss_bytes(broker.pid)
    publisher.close()
    stalled.close()
    return {
        "published": messages * MESSAGE, "delivered": delivered * MESSAGE, "kernel": kernel,
        "buffered": buffered, "rss_growth": rss_after - rss_before,
        "rate_before": baseline_rate, "rate_during": stalled_rate,
    }


def test_a_stalled_consumer_costs_at_most_the_output_watermark(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path)
    try:
        figures = measure(broker, 300)  # 19 MiB, far more than watermark and socket buffers
    finally:
        assert broker.stop() == 0
    print(report(figures))
    assert figures["delivered"] < figures["published"] / 2  # the rest waits in the queue
    assert figures["buffered"] <= WATERMARK + 2 * MESSAGE
    assert figures["rate_during"] > figures["rate_before"] / 3  # others keep moving


def report(figures: dict[str, float]) -> str:
    mib = 1024 * 1024
    return (f"stalled consumer: published {figures['published'] / mib:.0f} MiB, handed to the "
            f"connection {figures['delivered'] / mib:.1f} MiB (kernel buffers "
            f"{figures['kernel'] / mib:.1f} MiB, broker output buffer "
            f"{figures['buffered'] / mib:.2f} MiB), broker RSS +{figures['rss_growth'] / mib:.0f}"
            f" MiB; another client {figures['rate_before']:.0f} -> "
            f"{figures['rate_during']:.0f} round trips/s")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        process = BrokerProcess(Path(directory))
        try:
            print(report(measure(process, int(sys.argv[1]) if len(sys.argv) > 1 else 3000)))
        finally:
            process.stop()
