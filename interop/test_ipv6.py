"""IPv6: the default listener ``localhost`` is 127.0.0.1 and ::1 on one port, and ``--host ::``
listens on every address of both families. Node, Java and Go resolve ``localhost`` to ::1
first where /etc/hosts says so, and were refused when amqpd listened on 127.0.0.1 only.

These start amqpd with a listener of their own (``--port 0``), so they are amqpd-only.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import amqp
import anyio
import pika
import pytest
from config_broker import ConfigBroker
from test_node_amqplib import run_node

pytestmark = [pytest.mark.amqpd_only, pytest.mark.timeout(60)]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


if not _has_ipv6_loopback():
    pytestmark.append(pytest.mark.skip(reason="this machine has no IPv6 loopback (::1)"))


def listening_lines(broker: ConfigBroker, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        lines = [line.rstrip("\n") for line in broker.stdout_lines
                 if line.startswith("amqpd listening on ")]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def round_trip_pika(host: str, port: int, queue: str) -> bytes:
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host, port, connection_attempts=1, socket_timeout=5))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_publish("", queue, f"via {host}".encode())
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None
        return bytes(body)
    finally:
        connection.close()


@pytest.fixture
def default_broker(tmp_path: Path) -> Iterator[ConfigBroker]:
    broker = ConfigBroker(tmp_path, "", log_level="warning")  # host: the default
    yield broker
    broker.stop()


def test_localhost_is_both_loopbacks_on_one_port(default_broker: ConfigBroker) -> None:
    port = default_broker.port
    # The first line keeps naming IPv4: scripts and fixtures read the first line.
    assert listening_lines(default_broker, 2)[:2] == [
        f"amqpd listening on 127.0.0.1:{port}", f"amqpd listening on [::1]:{port}"]
    assert round_trip_pika("127.0.0.1", port, "v4") == b"via 127.0.0.1"
    # guest may log in from ::1: it is a loopback address.
    assert round_trip_pika("::1", port, "v6") == b"via ::1"


def test_ipv6_loopback_with_py_amqp_and_aio_pika(default_broker: ConfigBroker) -> None:
    port = default_broker.port
    connection = amqp.Connection(host=f"[::1]:{port}", connect_timeout=5)
    connection.connect()
    try:
        assert connection.channel().queue_declare("py-amqp-v6", auto_delete=True).queue
    finally:
        connection.close()

    async def scenario() -> None:
        async with await aio_pika.connect(f"amqp://guest:guest@[::1]:{port}/", timeout=10) \
                as aio_connection:
            channel = await aio_connection.channel()
            queue = await channel.declare_queue("aio-pika-v6", auto_delete=True)
            await channel.default_exchange.publish(aio_pika.Message(b"v6"), "aio-pika-v6")
            message = await queue.get(timeout=5)
            assert message is not None and message.body == b"v6"
            await message.ack()

    anyio.run(scenario)


def test_node_amqplib_over_ipv6(default_broker: ConfigBroker) -> None:
    result = run_node("close_after_burst.js",
                      f"amqp://guest:guest@[::1]:{default_broker.port}/%2F", "node-v6")
    assert result["ok"], result


def test_host_any_is_dual_stack(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, "", "--host", "::", log_level="warning")
    try:
        port = broker.port
        assert listening_lines(broker, 1)[0] == f"amqpd listening on [::]:{port}"
        with contextlib.closing(socket.create_connection(("127.0.0.1", port), 5)):
            pass
        assert round_trip_pika("127.0.0.1", port, "any-v4") == b"via 127.0.0.1"
        assert round_trip_pika("::1", port, "any-v6") == b"via ::1"
    finally:
        broker.stop()
