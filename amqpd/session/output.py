"""A connection's output: the frames queued for its socket, large bodies by reference.

Theory of operation: frames are appended to one bytearray, ``out``, so that many of them
leave in one system call. A message body of ``LARGE_BODY`` bytes or more is not copied into
it: the bytearray so far is closed, put in a list, and the body object itself (or, for a body
split into several frames, memoryviews of it) follows it in that list. The shell takes the
list with ``buffers_to_send()`` and hands each buffer to the transport, which writes what it
holds with one scatter-gather ``writev``: a 1 MiB body goes from the queue to the kernel
without a copy in this process. Below that size a copy costs less than a buffer more.

The output watermarks count every byte taken by the shell and not yet written
(``in_flight``), plus everything still queued here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from amqpd.broker.message import Message, QueueEntry
from amqpd.protocol import codec
from amqpd.protocol.constants import FRAME_BODY, FRAME_END_BYTE, FRAME_HEADER
from amqpd.session import trace
from amqpd.session.trace import TRACING

_FRAME_START = struct.Struct(">BHI")

#: Bodies from this size on are written from the message's own bytes, not copied.
LARGE_BODY = 16 * 1024

Buffer = bytes | bytearray | memoryview


class ConnectionOutput:
    """The output half of a connection (its base class): queueing and taking bytes."""

    def __init__(self, clock: Callable[[], float], frame_max: int,
                 high_watermark: int, low_watermark: int) -> None:
        self.clock = clock
        self.frame_max = frame_max
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.out = bytearray()
        # Closed bytearrays and large bodies, in order, all before ``out``.
        self.sealed: list[Buffer] = []
        self.sealed_size = 0
        # Bytes handed to the socket whose write has not completed yet (set by the shell).
        self.in_flight = 0
        self.wakeup: Callable[[], None] = _nothing
        self.last_sent = clock()
        # Stage timestamps of traced deliveries (session/trace.py): queued here, then taken.
        self.traced_queued: list[list[float]] = [] if TRACING else _NEVER_TRACED
        self.traced_taken: list[list[float]] = [] if TRACING else _NEVER_TRACED

    @property
    def has_output(self) -> bool:
        """True while anything is queued for the socket."""
        return bool(self.out) or bool(self.sealed)

    @property
    def queued(self) -> int:
        """Bytes queued for the socket and not taken by the shell yet."""
        return len(self.out) + self.sealed_size

    @property
    def congested(self) -> bool:
        """True while the output buffer is above its high watermark."""
        return self.queued + self.in_flight > self.high_watermark

    @property
    def below_low_watermark(self) -> bool:
        """True once queued and in-flight output fell below the low watermark."""
        return self.queued + self.in_flight <= self.low_watermark

    def _write(self, data: bytes) -> None:
        if not self.out and not self.sealed:
            self.wakeup()
        self.out += data

    def _write_large(self, body: Buffer) -> None:
        """Queue ``body`` by reference after everything queued so far."""
        if self.out:
            self.sealed.append(self.out)
            self.sealed_size += len(self.out)
            self.out = bytearray()
        self.sealed.append(body)
        self.sealed_size += len(body)

    def buffers_to_send(self) -> tuple[list[Buffer], int]:
        """Take everything queued for the socket: the buffers, in order, and their size.
        The caller owns them (nothing here writes to them again)."""
        buffers = self.sealed
        size = self.sealed_size
        if self.out:
            buffers.append(self.out)
            size += len(self.out)
            self.out = bytearray()
        if buffers:
            self.sealed = []
            self.sealed_size = 0
            self.last_sent = self.clock()
            if TRACING:
                trace.taken(self)
        return buffers, size

    def data_to_send(self) -> bytes:
        """Take everything queued for the socket, as one bytes object."""
        buffers, _ = self.buffers_to_send()
        return b"".join(buffers)

    def write_deliver(
        self, channel: int, consumer_tag: bytes, delivery_tag: int, entry: QueueEntry
    ) -> None:
        """Queue basic.deliver plus the content, appended straight to the output buffer."""
        out = self.out
        if not out and not self.sealed:
            self.wakeup()
        message = entry.message
        if TRACING:
            trace.dispatched(message)
        out += codec.encode_deliver(
            channel, consumer_tag, delivery_tag, entry.redelivered,
            message.route.exchange_bytes, message.route.routing_key_bytes,
        )
        self._append_content(channel, message, entry.delivery_count)
        if TRACING:
            trace.encoded(self, message)

    def _append_content(self, channel: int, message: Message, delivery_count: int = 0) -> None:
        out = self.out
        header = message.header_payload
        if delivery_count:
            # Redeliveries say how often the message failed before (x-delivery-count).
            header = with_delivery_count(message, delivery_count)
        out += _FRAME_START.pack(FRAME_HEADER, channel, len(header))
        out += header
        out += FRAME_END_BYTE
        body = message.body
        size = len(body)
        if not size:
            return
        chunk = self.frame_max - 8
        if size <= chunk:
            out += _FRAME_START.pack(FRAME_BODY, channel, size)
            if size < LARGE_BODY:
                out += body
            else:
                self._write_large(body)
            self.out += FRAME_END_BYTE
            return
        view = memoryview(body)
        by_reference = chunk >= LARGE_BODY
        for start in range(0, size, chunk):
            piece = view[start : start + chunk]
            self.out += _FRAME_START.pack(FRAME_BODY, channel, len(piece))
            if by_reference:
                self._write_large(piece)
            else:
                self.out += piece
            self.out += FRAME_END_BYTE


def with_delivery_count(message: Message, delivery_count: int) -> bytes:
    """The message's content header with ``x-delivery-count`` set (RabbitMQ quorum-queue
    style); the original header bytes stay untouched for other queues."""
    properties = codec.decode_properties(message.header_payload)
    headers = dict(properties.headers or {})
    headers["x-delivery-count"] = delivery_count
    properties.headers = headers
    return codec.encode_header_payload(len(message.body), properties)


def _nothing() -> None:
    return None


_NEVER_TRACED: list[list[float]] = []
