"""A connection's output leaves by two paths (amqpd/connection_io.py): written to the
transport at the end of the read that queued it (often another connection's read: a
publisher's delivers to a consumer), or by the connection's writer task when a send is still
in progress or the transport still holds bytes. Whatever path each batch takes, the bytes of
a connection arrive whole and in order, and a connection finished by a read is closed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import anyio
import pika
import pytest
from pamqp import commands
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqpd.listeners import plain_transport

from .broker_process import BrokerProcess
from .fuzz.mutations import handshake, method, publish

# Small bodies go into the connection's output buffer, 16 KiB or more by reference, and a
# body over frame_max (128 KiB) is several frames: the socket's buffers fill on the large ones.
SIZES = (10, 40_000, 300_000, 300, 5, 200_000, 1_300_000, 90_000)
MESSAGES = 96


def body_for(number: int) -> bytes:
    size = SIZES[number % len(SIZES)]
    stamp = f"{number:06d}".encode()
    return (stamp * (size // len(stamp) + 1))[:size]


class FrameReader:
    """Reads whole frames off a raw socket, a little at a time, pausing now and then so the
    broker's side of the socket fills up and its transport keeps what the kernel refused."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.read_since_pause = 0

    def next_frame(self) -> object:
        while True:
            if len(self.buffer) >= 7:
                size = struct.unpack_from(">I", self.buffer, 3)[0]
                if len(self.buffer) >= size + 8:
                    consumed, _channel, value = pframe.unmarshal(self.buffer[: size + 8])
                    self.buffer = self.buffer[consumed:]
                    return value
            chunk = self.sock.recv(32 * 1024)
            assert chunk, "the broker closed the connection"
            self.buffer += chunk
            self.read_since_pause += len(chunk)
            if self.read_since_pause > 512 * 1024:
                self.read_since_pause = 0
                time.sleep(0.02)


def raw_consumer(broker: BrokerProcess, queue: str) -> tuple[socket.socket, FrameReader]:
    """A raw client consuming ``queue`` with no-ack and no prefetch limit: every delivery
    goes out as soon as the connection's output is below its watermark."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((broker.host, broker.port))
    sock.settimeout(10)
    sock.sendall(b"".join([
        *handshake(heartbeat=0),
        method(1, commands.Channel.Open()),
        method(1, commands.Queue.Declare(queue=queue)),
        method(1, commands.Basic.Consume(queue=queue, consumer_tag="paced", no_ack=True)),
    ]))
    reader = FrameReader(sock)
    while not isinstance(reader.next_frame(), commands.Basic.ConsumeOk):
        pass
    return sock, reader


def receive_bodies(reader: FrameReader, count: int) -> list[bytes]:
    bodies: list[bytes] = []
    expected = 0
    body = b""
    while len(bodies) < count:
        value = reader.next_frame()
        if isinstance(value, ContentHeader):
            expected, body = value.body_size, b""
            if not expected:
                bodies.append(body)
        elif isinstance(value, ContentBody):
            body += value.value
            if len(body) == expected:
                bodies.append(body)
    return bodies


def test_bodies_of_every_size_reach_a_paced_consumer_whole_and_in_order(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path)
    try:
        sock, reader = raw_consumer(broker, "paced")
        received: list[bytes] = []
        consumer = threading.Thread(
            target=lambda: received.extend(receive_bodies(reader, MESSAGES)), daemon=True)
        consumer.start()
        publisher = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
        channel = publisher.channel()
        for number in range(MESSAGES):
            channel.basic_publish("", "paced", body_for(number))
        consumer.join(60)
        publisher.close()
        sock.close()
    finally:
        assert broker.stop() == 0
    assert not consumer.is_alive(), f"{len(received)} of {MESSAGES} messages received"
    assert [len(body) for body in received] == [len(body_for(n)) for n in range(MESSAGES)]
    assert received == [body_for(number) for number in range(MESSAGES)]


def test_a_close_in_the_same_read_as_other_work_is_answered_and_the_socket_closed(
        tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path)
    try:
        sock = socket.create_connection((broker.host, broker.port), timeout=10)
        # One write: the broker gets the declare, the publish and the close in one read.
        sock.sendall(b"".join([
            *handshake(heartbeat=0),
            method(1, commands.Channel.Open()),
            method(1, commands.Queue.Declare(queue="closing")),
            *publish(1, "", "closing", b"last words"),
            method(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                               method_id=0)),
        ]))
        reader = FrameReader(sock)
        answers: list[type] = []
        while not answers or answers[-1] is not commands.Connection.CloseOk:
            answers.append(type(reader.next_frame()))
        assert commands.Queue.DeclareOk in answers
        assert sock.recv(1) == b""  # the broker closed its end after close-ok
        sock.close()
        checker = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
        declared = checker.channel().queue_declare("closing", passive=True)
        assert declared.method.message_count == 1
        checker.close()
    finally:
        assert broker.stop() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_plain_tcp_stream_offers_the_transport_a_read_writes_to(
        anyio_backend: str) -> None:
    """Without it (an anyio upgrade renaming ``_transport``) every write waits for the
    writer task again: correct, but a loop turn later (README, "Where a message's time
    goes"). What the read path calls on it is asyncio's public transport API."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            transport = plain_transport(client)
            assert transport is not None, "anyio no longer exposes its transport as _transport"
            assert not transport.is_closing()
            assert transport.get_write_buffer_size() == 0
