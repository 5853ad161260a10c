"""Split a byte stream into AMQP frames, checking everything pamqp does not.

pamqp's ``frame.unmarshal`` accepts a 7-byte heartbeat with no frame-end octet and never
enforces a size limit, so framing is ours: the frame-end octet, the negotiated frame_max and
the frame type are checked here, before any payload is decoded.

Theory of operation: most reads end in the middle of a frame, so the unparsed tail is kept
and joined with the next read (one copy of that read). Frames are cut from the joined bytes
with slicing, which makes each payload an independent ``bytes`` object in one copy: the
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

    __slots__ = ("_data", "_offset", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._data = b""
        self._offset = 0
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._offset < len(self._data):
            self._data = self._data[self._offset :] + data
        else:
            self._data = data
        self._offset = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._data) - self._offset

    def frames(self) -> Iterator[Frame]:
        """Yield ``(frame_type, channel, payload)`` for every complete frame buffered.

        Raises:
            FrameError: on a bad frame-end octet, an unknown frame type or an oversize frame.
        """
        data = self._data
        size_of_data = len(data)
        offset = self._offset
        unpack_header = _FRAME_HEADER.unpack_from
        known = _KNOWN_TYPES
        frame_max = self.frame_max
        while size_of_data - offset >= 7:
            frame_type, channel, size = unpack_header(data, offset)
            if frame_type not in known:
                raise FrameError(f"unknown frame type {frame_type}")
            # RabbitMQ-compat: frame_max bounds the whole frame, but RabbitMQ tolerates
            # 8 bytes over it (clients that count only the payload), and so do we.
            if size > frame_max:
                raise FrameError(
                    f"frame payload of {size} bytes exceeds the negotiated frame_max of "
                    f"{frame_max} bytes"
                )
            end = offset + 7 + size
            if size_of_data <= end:
                break
            if data[end] != FRAME_END:
                raise FrameError(
                    f"frame-end octet is 0x{data[end]:02x}, expected 0xce "
                    f"(frame type {frame_type}, channel {channel}, size {size})"
                )
            payload = data[offset + 7 : end]
            offset = self._offset = end + 1
            yield frame_type, channel, payload
            frame_max = self.frame_max  # connection.tune-ok may have changed it
