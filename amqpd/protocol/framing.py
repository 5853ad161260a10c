"""Split a byte stream into AMQP frames, checking everything pamqp does not.

pamqp's ``frame.unmarshal`` accepts a 7-byte heartbeat with no frame-end octet and never
enforces a size limit, so framing is ours: the frame-end octet, the negotiated frame_max and
the frame type are checked here, before any payload is decoded.

Theory of operation: ``feed`` appends to a bytearray; ``frames`` yields complete frames and
keeps the unconsumed tail. Each yielded payload is an independent ``bytes`` object, so the
caller may keep it (a message body) after the buffer moves on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from amqpd.protocol.constants import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
)
from amqpd.protocol.errors import FrameError

_FRAME_HEADER = struct.Struct(">BHI")
_KNOWN_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})

Frame = tuple[int, int, bytes]


class FrameReader:
    """Incremental frame splitter with a size limit."""

    __slots__ = ("_buffer", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buffer = bytearray()
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def frames(self) -> Iterator[Frame]:
        """Yield ``(frame_type, channel, payload)`` for every complete frame buffered.

        Raises:
            FrameError: on a bad frame-end octet, an unknown frame type or an oversize frame.
        """
        buffer = self._buffer
        offset = 0
        unpack_header = _FRAME_HEADER.unpack_from
        try:
            while len(buffer) - offset >= 7:
                frame_type, channel, size = unpack_header(buffer, offset)
                if frame_type not in _KNOWN_TYPES:
                    raise FrameError(f"unknown frame type {frame_type}")
                # RabbitMQ-compat: frame_max bounds the whole frame, but RabbitMQ tolerates
                # 8 bytes over it (clients that count only the payload), and so do we.
                if size > self.frame_max:
                    raise FrameError(
                        f"frame payload of {size} bytes exceeds the negotiated frame_max of "
                        f"{self.frame_max} bytes"
                    )
                end = offset + 7 + size
                if len(buffer) <= end:
                    break
                if buffer[end] != FRAME_END:
                    raise FrameError(
                        f"frame-end octet is 0x{buffer[end]:02x}, expected 0xce "
                        f"(frame type {frame_type}, channel {channel}, size {size})"
                    )
                payload = bytes(buffer[offset + 7 : end])
                offset = end + 1
                yield frame_type, channel, payload
        finally:
            if offset:
                del buffer[:offset]
